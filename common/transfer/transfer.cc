#include "common/transfer/transfer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/util/sha256.h"
#include "common/util/status.h"

namespace ft::transfer {

absl::StatusOr<std::unique_ptr<FileSource>> FileSource::Open(const std::string& path, std::string sha256) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  const std::streamoff size = in.tellg();
  if (size < 0) return absl::DataLossError(absl::StrCat("cannot read ", path));
  in.seekg(0);
  if (sha256.empty()) {
    FT_ASSIGN_OR_RETURN(sha256, util::Sha256File(path));
  }
  return std::unique_ptr<FileSource>(new FileSource(path, std::move(in), static_cast<int64_t>(size), std::move(sha256)));
}

absl::StatusOr<bool> FileSource::Next(int64_t* offset, std::string* data) {
  if (done_) return false;
  *offset = offset_;
  const int64_t left = size_ - offset_;
  data->resize(static_cast<size_t>(std::min<int64_t>(left, static_cast<int64_t>(kChunkBytes))));
  if (!data->empty()) {
    in_.read(data->data(), static_cast<std::streamsize>(data->size()));
    if (in_.gcount() != static_cast<std::streamsize>(data->size())) {
      return absl::DataLossError(absl::StrCat(path_, " shrank while being sent"));
    }
  }
  offset_ += static_cast<int64_t>(data->size());
  done_ = offset_ >= size_;
  return true;
}

absl::Status SendFile(FileSource& source, const std::function<bool(int64_t offset, std::string data)>& write,
                      absl::string_view what) {
  int64_t offset = 0;
  std::string data;
  while (true) {
    FT_ASSIGN_OR_RETURN(bool more, source.Next(&offset, &data));
    if (!more) return absl::OkStatus();
    if (!write(offset, std::move(data))) return absl::UnavailableError(absl::StrCat(what, ": the receiver went away"));
    data.clear();
  }
}

struct FileSink::Hash {
  util::Sha256 sha;
};

absl::StatusOr<std::unique_ptr<FileSink>> FileSink::Create(const std::string& path, std::string what) {
  const std::string part = path + ".part";
  const int fd = ::open(part.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot create ", part, ": ", std::strerror(errno)));
  return std::unique_ptr<FileSink>(new FileSink(path, std::move(what), fd));
}

FileSink::FileSink(std::string path, std::string what, int fd)
    : path_(std::move(path)), part_(path_ + ".part"), what_(std::move(what)), fd_(fd), hash_(new Hash) {}

FileSink::~FileSink() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(part_.c_str());
}

absl::Status FileSink::WriteError(int error) const {
  if (error == ENOSPC || error == EDQUOT || error == EFBIG) {
    return absl::ResourceExhaustedError(absl::StrCat("the disk refused ", what_, " (", std::strerror(error),
                                                     "): free space on the server's disk, or raise its limit"));
  }
  return absl::InternalError(absl::StrCat("cannot write ", what_, " to ", part_, ": ", std::strerror(error)));
}

absl::Status FileSink::Append(int64_t offset, absl::string_view data) {
  if (offset != bytes_) {
    return absl::DataLossError(
        absl::StrCat(what_, " arrived out of order: a chunk at byte ", offset, " after ", bytes_, " bytes"));
  }
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd_, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return WriteError(errno);
    done += static_cast<size_t>(n);
  }
  hash_->sha.Update(data);
  bytes_ += static_cast<int64_t>(data.size());
  return absl::OkStatus();
}

absl::Status FileSink::Commit(int64_t expected_size, const std::string& expected_sha256) {
  const std::string got = hash_->sha.HexDigest();
  if ((expected_size >= 0 && bytes_ != expected_size) || got != expected_sha256) {
    return absl::DataLossError(absl::StrCat(what_, " arrived corrupted: ", bytes_, " of ", expected_size,
                                            " bytes, sha256 ", got, " (expected ", expected_sha256, ")"));
  }
  if (::fsync(fd_) != 0 || ::close(fd_) != 0) {
    const int error = errno;
    fd_ = -1;
    return WriteError(error);
  }
  fd_ = -1;
  if (::rename(part_.c_str(), path_.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", part_, ": ", std::strerror(errno)));
  }
  committed_ = true;
  return absl::OkStatus();
}

}  // namespace ft::transfer
