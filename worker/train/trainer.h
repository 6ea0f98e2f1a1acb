// A whole training job, from its resolved spec to the model to export.
#ifndef FT_WORKER_TRAIN_TRAINER_H_
#define FT_WORKER_TRAIN_TRAINER_H_

#include <string>

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "finetune/v1/worker.pb.h"
#include "worker/export/metadata.h"
#include "worker/train/hooks.h"

namespace ft::util {
class Clock;
}  // namespace ft::util

namespace ft::worker {

class Gang;

namespace pb = ::finetune::v1;

// Mid-epoch checkpoints when the spec leaves checkpoint_interval_seconds unset.
inline constexpr int kDefaultCheckpointIntervalSeconds = 300;

struct TrainerOptions {
  torch::Device device = torch::kCPU;
  std::string job_id;
  // Seconds between progress events.
  double progress_interval_seconds = 2.0;
  int loader_threads = 1;
  // Decoded training and validation images kept in memory, at most; the
  // rest are decoded again every epoch. Negative: no limit.
  int64_t decode_cache_bytes = -1;
  // The job's scratch directory: a cache of frozen stages' outputs past
  // decode_cache_bytes goes to a memory-mapped file here. Empty: none.
  std::string work_dir;
  // A checkpoint to resume from (the bytes a save_checkpoint hook was
  // given, for this job), or empty to start afresh. Released once restored.
  std::string resume;
  // Measures checkpoint_interval_seconds; not owned; null: the real clock.
  util::Clock* clock = nullptr;
  // The most points of an epoch's per-step curve (EpochLoopOptions).
  int64_t max_step_points = 1000;
  // A multi-worker job: this rank's group (not owned), or null. Ranks other
  // than 0 stop after the epochs (no test, no export); a broken group is
  // UNAVAILABLE.
  Gang* gang = nullptr;
};

struct TrainResult {
  bool cancelled = false;
  // Stopped by TrainerHooks::preempted; its last checkpoint went to
  // save_checkpoint (unless it stopped before training began). The rest is
  // unset.
  bool preempted = false;
  torch::jit::Module model;  // FineTunedClassifier, in eval mode, on CPU
  pb::JobMetrics metrics;
  std::string metadata_json;  // metadata.json for the export: MetadataJson(metadata)
  // What metadata.json and the model card (ModelCard) say; the export adds
  // its ONNX facts.
  ModelMetadata metadata;
};

// Runs a whole job: reads and decodes the data, builds the backbone, loads
// the weights, freezes, trains (from options.resume when set), validates
// and checkpoints each epoch, tests, and describes the model for its
// export. Expects InitTorchProcess() to have run. Never throws: LibTorch
// and OpenCV errors come back as a Status naming the problem; an unknown
// string option in the spec is INVALID_ARGUMENT; a checkpoint that does
// not parse is DATA_LOSS, and one of another job, spec or dataset
// FAILED_PRECONDITION (EpochLoop::Restore). On a rank of a multi-worker
// job, its own failure is reported to the others (Gang::ReportFailure), and
// a collective that failed because another rank ended for its own reason
// returns that rank's status. `options` is taken by value so that a caller
// can move the checkpoint's bytes in.
absl::StatusOr<TrainResult> RunTraining(const pb::ResolvedJob& job, TrainerOptions options,
                                        const TrainerHooks& hooks);

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_TRAINER_H_
