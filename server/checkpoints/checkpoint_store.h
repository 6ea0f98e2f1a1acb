#ifndef FT_SERVER_CHECKPOINTS_CHECKPOINT_STORE_H_
#define FT_SERVER_CHECKPOINTS_CHECKPOINT_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/transfer/transfer.h"

namespace ft::server {

struct CheckpointStoreOptions {
  // <root>/<job_id>/<n>.ckpt with <n>.json beside it. Usually <data-dir>/checkpoints.
  std::string root;
  // Checkpoints kept per job: the newest ones.
  int keep = 2;
  // Larger uploads are RESOURCE_EXHAUSTED.
  int64_t max_bytes = int64_t{16} << 30;
  // Set when several server replicas share `root`: uploads are staged as
  // upload-<replica_id>+*.part (the "+", which ids lack, keeps replica "a" off "a-b"'s), and Create() deletes only this replica's
  // (another's may be in progress). Empty: upload-*.part, all deleted.
  std::string replica_id = "";
};

// Where a stored checkpoint stands in its job.
struct CheckpointInfo {
  int64_t number = 0;  // 1, 2, 3... per job, in the order stored
  int32_t epoch = 0;   // the epoch it is in (complete when epoch_end)
  int64_t step = 0;    // optimiser steps done in that epoch
  bool epoch_end = false;
  int64_t size_bytes = 0;
  std::string sha256;
  std::string path;
};

// The checkpoints of running jobs, on the server's disk. Writes are atomic
// (a staging file, fsync, rename, then the record), so a crash leaves either
// the whole checkpoint or none; a checkpoint whose bytes do not match its
// sha256 is passed over for the one before it. Thread-safe.
class CheckpointStore {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointStore>> Create(const CheckpointStoreOptions& options);

  // One upload in progress. Not thread-safe.
  class Upload {
   public:
    // RESOURCE_EXHAUSTED past the store's limit or the declared size.
    absl::Status Append(absl::string_view data);

   private:
    friend class CheckpointStore;
    Upload(std::string job_id, CheckpointInfo info, std::unique_ptr<transfer::FileSink> sink, int64_t max_bytes)
        : job_id_(std::move(job_id)), info_(std::move(info)), sink_(std::move(sink)), max_bytes_(max_bytes) {}
    std::string job_id_;
    CheckpointInfo info_;
    std::unique_ptr<transfer::FileSink> sink_;
    int64_t max_bytes_;
  };

  // INVALID_ARGUMENT for a bad job id, sha256 or size; RESOURCE_EXHAUSTED
  // past max_bytes.
  absl::StatusOr<std::unique_ptr<Upload>> BeginUpload(const std::string& job_id, int32_t epoch, int64_t step,
                                                      bool epoch_end, int64_t size_bytes, const std::string& sha256);
  // DATA_LOSS unless the declared size and sha256 arrived; then publishes
  // it as the job's newest and deletes all but the newest `keep`.
  absl::StatusOr<CheckpointInfo> Commit(std::unique_ptr<Upload> upload);

  // The newest checkpoint (numbered below `before`, when it is positive)
  // whose file still matches its sha256; NOT_FOUND when there is none. Each
  // one passed over is reported to `skipped` with the reason, newest first.
  absl::StatusOr<CheckpointInfo> Newest(const std::string& job_id,
                                        const std::function<void(const CheckpointInfo&, const std::string& why)>&
                                            skipped = nullptr,
                                        int64_t before = 0);
  // The job's checkpoints, oldest first (records only; files not checked).
  std::vector<CheckpointInfo> List(const std::string& job_id);
  // Deletes the job's checkpoints (the job ended).
  void DeleteJob(const std::string& job_id);

 private:
  explicit CheckpointStore(const CheckpointStoreOptions& options) : options_(options) {}
  std::string JobDir(const std::string& job_id) const;

  const CheckpointStoreOptions options_;
  absl::Mutex mu_;  // serialises numbering and pruning
};

}  // namespace ft::server

#endif  // FT_SERVER_CHECKPOINTS_CHECKPOINT_STORE_H_
