// A job's training state as bytes: what a checkpoint holds, in LibTorch's
// own serialisation (torch::serialize::OutputArchive, a TorchScript zip).
// The epoch loop decides what goes in (EpochLoop::Checkpoint); this is the
// format around it: a version, the job's fingerprint, the position, and
// typed keys.
#ifndef FT_WORKER_TRAIN_CHECKPOINT_H_
#define FT_WORKER_TRAIN_CHECKPOINT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/serialize/archive.h>
#include <torch/types.h>

#include "absl/status/statusor.h"
#include "finetune/v1/finetune.pb.h"
#include "worker/train/hooks.h"

namespace ft::worker {

// Bumped whenever a key changes meaning; another version is refused.
inline constexpr int64_t kCheckpointFormat = 1;

// What a checkpoint may resume: the job id, its spec (without
// checkpoint_interval_seconds, which changes nothing that is trained), its
// classes, and the labels of its training and validation images in order
// (the dataset as decoded, independent of where it lies on disk). A
// sha256, hex.
std::string TrainingFingerprint(const std::string& job_id, const pb::JobSpec& spec,
                                const std::vector<std::string>& classes, const std::vector<int64_t>& train_labels,
                                const std::vector<int64_t>& val_labels);

// What every checkpoint says about itself.
struct CheckpointInfo {
  int64_t format = 0;
  std::string fingerprint;
  CheckpointPosition position;
};

// Parses `bytes` as a checkpoint (every key, on the CPU) and returns its
// header. DATA_LOSS "the checkpoint does not parse: ..." when the bytes are
// not a whole archive (truncated, damaged, or something else), and
// FAILED_PRECONDITION for another format version. Never throws.
absl::StatusOr<CheckpointInfo> InspectCheckpoint(const std::string& bytes);

// Builds a checkpoint: the header first, then the caller's keys. Keys are
// paths ("model/names"); a key is written once. Not thread-safe.
class CheckpointWriter {
 public:
  CheckpointWriter(const std::string& fingerprint, const CheckpointPosition& position);

  void Int(const std::string& key, int64_t value);
  // Exact: IEEE doubles, NaN and infinities included.
  void Double(const std::string& key, double value);
  // Any bytes (serialised protos), kept as a uint8 tensor.
  void Bytes(const std::string& key, const std::string& value);
  void Text(const std::string& key, const std::string& value);
  // key/size and key/<i>, on whatever device they are.
  void Tensors(const std::string& key, const std::vector<torch::Tensor>& tensors);
  // For what serialises itself (an optimiser): written as a nested archive.
  torch::serialize::OutputArchive& archive() { return archive_; }

  // The checkpoint's bytes. Call once, last.
  std::string Finish();

 private:
  torch::serialize::OutputArchive archive_;
};

// Reads a checkpoint. The accessors throw c10::Error when a key is missing
// or of another type; callers catch at their boundary. Not thread-safe.
class CheckpointReader {
 public:
  // Parses `bytes` with its tensors on `device`. InspectCheckpoint's errors,
  // and FAILED_PRECONDITION naming both when its fingerprint is not
  // `fingerprint` (a checkpoint of another job, spec or dataset).
  static absl::StatusOr<std::unique_ptr<CheckpointReader>> Open(const std::string& bytes,
                                                                const std::string& fingerprint,
                                                                torch::Device device);

  const CheckpointInfo& info() const { return info_; }
  int64_t Int(const std::string& key);
  double Double(const std::string& key);
  std::string Bytes(const std::string& key);
  std::string Text(const std::string& key);
  std::vector<torch::Tensor> Tensors(const std::string& key);
  bool Has(const std::string& key);
  torch::serialize::InputArchive& archive() { return archive_; }

 private:
  CheckpointReader() = default;
  torch::serialize::InputArchive archive_;
  CheckpointInfo info_;
};

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_CHECKPOINT_H_
