#ifndef FT_WORKER_TRAIN_TRAINER_H_
#define FT_WORKER_TRAIN_TRAINER_H_

#include <functional>
#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "finetune/v1/worker.pb.h"
#include "common/datasets/layout.h"

namespace ft::worker {

namespace pb = ::finetune::v1;

// How the trainer reports to its caller. Every hook may be empty.
struct TrainerHooks {
  std::function<void(const pb::Progress&)> on_progress;
  std::function<void(const pb::EpochSummary&)> on_epoch;
  std::function<void(const std::string& level, const std::string& message)> on_log;
  // After each optimiser step: its wall time and batch size.
  std::function<void(double seconds, int64_t images)> on_step;
  // Polled between steps; true stops training (the result is then CANCELLED).
  std::function<bool()> cancelled;
  // Fetches a stored model's model.pt for model:// weights; returns its path.
  std::function<absl::StatusOr<std::string>(const std::string& model_id)> fetch_model;
};

struct TrainerOptions {
  torch::Device device = torch::kCPU;
  std::string job_id;
  // Seconds between progress events.
  double progress_interval_seconds = 2.0;
  int loader_threads = 1;
  // Decoded training and validation images kept in memory, at most; the
  // rest are decoded again every epoch. Negative: no limit.
  int64_t decode_cache_bytes = -1;
};

struct TrainResult {
  bool cancelled = false;
  torch::jit::Module model;  // FineTunedClassifier, in eval mode, on CPU
  pb::JobMetrics metrics;
  std::string metadata_json;  // metadata.json for the export
};

// The files of the job's dataset, split exactly as the server did at submit
// (its class subset, per-class caps, val split and seed).
absl::StatusOr<datasets::DatasetLayout> ScanJobDataset(const pb::ResolvedJob& job);

// Runs a whole job: reads and decodes the data, builds the backbone, loads
// the weights, freezes, trains, validates each epoch. Never throws: LibTorch
// and OpenCV errors come back as a Status naming the problem.
absl::StatusOr<TrainResult> RunTraining(const pb::ResolvedJob& job, const TrainerOptions& options,
                                        const TrainerHooks& hooks);

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_TRAINER_H_
