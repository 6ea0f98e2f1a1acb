// Files sent as a stream of chunks with a sha256: the one sender and the one
// receiver behind every model and dataset transfer (worker uploads and
// fetches, client downloads and uploads, the server's replies).
#ifndef FT_COMMON_TRANSFER_TRANSFER_H_
#define FT_COMMON_TRANSFER_TRANSFER_H_

#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ft::transfer {

// Under gRPC's default 4 MiB message cap, and large enough that per-message
// costs do not show.
inline constexpr size_t kChunkBytes = 256 * 1024;

// Reads one file as successive chunks. Not thread-safe.
class FileSource {
 public:
  // NOT_FOUND naming `path` when it cannot be opened. `sha256` is the file's
  // digest when the caller already knows it (a store that recorded it);
  // when empty, it is computed here first, in one pass over the file.
  static absl::StatusOr<std::unique_ptr<FileSource>> Open(const std::string& path, std::string sha256 = "");

  int64_t size() const { return size_; }
  const std::string& sha256() const { return sha256_; }

  // Fills the next chunk and returns true, or returns false after the last.
  // A file of 0 bytes yields one empty chunk, so that a receiver still
  // learns its size and digest. DATA_LOSS when the file shrinks meanwhile.
  absl::StatusOr<bool> Next(int64_t* offset, std::string* data);

 private:
  FileSource(std::string path, std::ifstream in, int64_t size, std::string sha256)
      : path_(std::move(path)), in_(std::move(in)), size_(size), sha256_(std::move(sha256)) {}
  const std::string path_;
  std::ifstream in_;
  const int64_t size_;
  const std::string sha256_;
  int64_t offset_ = 0;
  bool done_ = false;
};

// Sends every chunk of `source` through `write`, which returns false when
// the peer is gone (a closed stream); SendFile then returns UNAVAILABLE
// "<what>: the receiver went away". Errors of `source` pass through.
absl::Status SendFile(FileSource& source, const std::function<bool(int64_t offset, std::string data)>& write,
                      absl::string_view what);

// Sends `header` and then `source`'s bytes as `Chunk`s with `data` set, over
// a client stream `writer` (UploadModelChunk, UploadDatasetRequest), and
// half-closes it. The returned status is the sending side's: UNAVAILABLE
// when the receiver went away (its Finish() says why), or a local read
// error. The caller then calls writer->Finish().
template <typename Chunk, typename Writer>
absl::Status UploadFile(Writer& writer, const Chunk& header, FileSource& source, absl::string_view what) {
  absl::Status sent = absl::UnavailableError(std::string(what) + ": the receiver refused the header");
  if (writer.Write(header)) {
    sent = SendFile(
        source,
        [&writer](int64_t, std::string data) {
          Chunk chunk;
          chunk.set_data(std::move(data));
          return writer.Write(chunk);
        },
        what);
  }
  writer.WritesDone();
  return sent;
}

// The outcome of an upload: a local read error explains more than the
// receiver's complaint about a short file; otherwise the receiver's status.
inline absl::Status UploadOutcome(const absl::Status& sent, const absl::Status& finished) {
  return !sent.ok() && !absl::IsUnavailable(sent) ? sent : finished;
}

// Receives one file, in order, into "<path>.part"; Commit checks its size
// and digest and publishes it at `path` (fsync, then rename), so that no
// reader ever sees a torn or unverified file. Not thread-safe.
class FileSink {
 public:
  // `what` names the file in errors ("model m1", "dataset 3f2a...").
  // INTERNAL naming the file when it cannot be created.
  static absl::StatusOr<std::unique_ptr<FileSink>> Create(const std::string& path, std::string what);
  // Removes the partial file unless committed.
  ~FileSink();
  FileSink(const FileSink&) = delete;
  FileSink& operator=(const FileSink&) = delete;

  // DATA_LOSS when `offset` is not where the last chunk ended, INTERNAL when
  // the disk refuses the bytes.
  absl::Status Append(int64_t offset, absl::string_view data);
  // DATA_LOSS "<what> arrived corrupted: N of M bytes, sha256 X" unless
  // exactly `expected_size` bytes (not checked when negative) with digest
  // `expected_sha256` arrived; then publishes the file.
  absl::Status Commit(int64_t expected_size, const std::string& expected_sha256);

  int64_t bytes() const { return bytes_; }
  const std::string& path() const { return path_; }

 private:
  FileSink(std::string path, std::string what, int fd);
  // A failed write or fsync: RESOURCE_EXHAUSTED naming the disk when it is
  // full or past a size limit (ENOSPC, EDQUOT, EFBIG), else INTERNAL.
  absl::Status WriteError(int error) const;
  struct Hash;
  const std::string path_;
  const std::string part_;
  const std::string what_;
  int fd_;
  std::unique_ptr<Hash> hash_;
  int64_t bytes_ = 0;
  bool committed_ = false;
};

// Receives a stream of chunk messages (ModelChunk, DatasetChunk: `offset`,
// `data`, and on the first chunk `total_size` and `sha256`) into `sink` and
// commits it against the first chunk's size and digest. `read(&chunk)`
// returns false at the end of the stream; `finish()` then gives the
// stream's own status, which wins over what arrived. When the transfer ends
// early (a bad chunk, or `stop`), `cancel()` is called first, so that the
// sender stops and `finish()` returns. `stop`, when set, is
// polled after every chunk; true ends the transfer as CANCELLED. A
// non-empty `expected_sha256` (what the receiver asked for) is checked
// instead of the digest the sender announces.
template <typename Chunk>
absl::Status ReceiveFile(FileSink& sink, const std::function<bool(Chunk*)>& read, const std::function<void()>& cancel,
                         const std::function<absl::Status()>& finish, const std::function<bool()>& stop = nullptr,
                         const std::string& expected_sha256 = "") {
  Chunk chunk;
  int64_t total = -1;
  std::string digest;
  absl::Status status;
  bool stopped = false;
  while (status.ok() && read(&chunk)) {
    if (chunk.offset() == 0) {
      total = chunk.total_size();
      digest = chunk.sha256();
    }
    status = sink.Append(chunk.offset(), chunk.data());
    if (status.ok() && stop && stop()) stopped = true;
    if (stopped) break;
  }
  if (stopped || !status.ok()) cancel();
  const absl::Status finished = finish();
  if (stopped) return absl::CancelledError("cancelled during the transfer");
  if (!status.ok()) return status;
  if (!finished.ok()) return finished;
  return sink.Commit(total, expected_sha256.empty() ? digest : expected_sha256);
}

}  // namespace ft::transfer

#endif  // FT_COMMON_TRANSFER_TRANSFER_H_
