// The epochs of a job, as torchvision's train.py runs them: its main loop
// over epochs (the two phases, validation, the best epoch, early stopping)
// and `train_one_epoch` (the steps, with their progress events and the
// divergence monitor of guards.h).
#ifndef FT_WORKER_TRAIN_EPOCH_LOOP_H_
#define FT_WORKER_TRAIN_EPOCH_LOOP_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include <torch/script.h>
#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "finetune/v1/worker.pb.h"
#include "worker/backbones/backbone.h"
#include "worker/data/images.h"
#include "worker/data/loader.h"
#include "worker/train/evaluation.h"
#include "worker/train/guards.h"
#include "worker/train/hooks.h"
#include "worker/train/recipe.h"

namespace ft::worker {

// What the epochs train and validate on: decoded images, batched by a
// BatchLoader every epoch, or, when `cached`, the backbone's features of
// every image, computed once.
struct EpochData {
  const ImageSet* train = nullptr;  // not owned
  const ImageSet* val = nullptr;    // not owned
  // The epoch loop sets train_loader's seed and merge_single_tail.
  LoaderOptions train_loader;
  LoaderOptions eval_loader;
  bool cached = false;
  torch::Tensor train_features, train_labels;  // on the device, when cached
  torch::Tensor val_features, val_labels;      // val_labels on the CPU
};

// EpochData over `train` and `val` (not owned; they must outlive it). With
// `cache`, computes `model`'s features of both sets now, reported as the
// "cache" phase of `epochs` epochs and logged.
EpochData PrepareEpochData(torch::jit::Module& model, const ImageSet& train, const ImageSet& val,
                           const LoaderOptions& train_loader, const LoaderOptions& eval_loader, bool cache,
                           int64_t feature_dim, int epochs, torch::Device device, const Reporter& report);

// How each phase's epochs are cut into batches.
struct PhasePlans {
  BatchPlan first;
  BatchPlan finetune;  // the same as `first` without a fine-tuning phase
};

// Plans both phases' batches of `train_images` (see PlanBatches): where a
// last batch would hold one image, probes `model` at each phase's freeze
// depth for a BatchNorm that would see one value (SingleValueBatchNorm,
// which leaves the model and the random stream as they were), unless the
// epochs run on cached features. Logs a merged last batch. PlanBatches' and
// the probe's errors.
absl::StatusOr<PhasePlans> PlanPhases(torch::jit::Module& model, const Backbone& backbone, const Recipe& recipe,
                                      int64_t train_images, bool cached, const Reporter& report);

struct EpochLoopOptions {
  torch::Device device = torch::kCPU;
  // Seconds between progress events within an epoch.
  double progress_interval_seconds = 2.0;
};

// What the epochs leave.
struct EpochsResult {
  // Stopped by Reporter::Cancelled() before a step; the rest is partial.
  bool cancelled = false;
  // The epoch with the lowest validation loss, its summary and its weights
  // (empty when no epoch improved on infinity), and the last epoch's summary.
  int best_epoch = 0;
  pb::EpochSummary best_summary;
  pb::EpochSummary last_summary;
  std::vector<torch::Tensor> best_weights;
  // Every epoch's summary, as sent.
  std::vector<pb::EpochSummary> history;
};

// Runs a job's epochs. The arguments are not owned and must outlive the
// loop; `model` is trained in place. One thread.
class EpochLoop {
 public:
  EpochLoop(const Recipe& recipe, const EpochLoopOptions& options, torch::jit::Module& model,
            const Backbone& backbone, EpochData& data, torch::nn::functional::CrossEntropyFuncOptions loss,
            const PhasePlans& plans, int64_t num_classes, const Reporter& report);
  EpochLoop(const EpochLoop&) = delete;
  EpochLoop& operator=(const EpochLoop&) = delete;

  // Trains epochs 1..spec.epochs (fewer with early stopping), each followed
  // by validation and a summary through Reporter::Epoch, and counts the
  // trained images and the completed epochs in `metrics`. Call once.
  // FAILED_PRECONDITION "training diverged at epoch E..." when a step's
  // loss, a weight or the validation loss is not finite, or the loss
  // explodes. Throws what LibTorch and the loader throw.
  absl::StatusOr<EpochsResult> Run(pb::JobMetrics* metrics);

 private:
  struct EpochStats {
    bool cancelled = false;
    std::chrono::steady_clock::time_point start;
    double train_seconds = 0;  // the steps only, without validation
    double loss_sum = 0;       // per-image loss, summed
    int64_t correct = 0;
    int64_t seen = 0;
    double lr = 0;  // at the last step
    double loader_wait_seconds = 0;
  };

  // A fresh optimiser at `phase`'s freeze depth and rate, for `plan`'s batches.
  void EnterPhase(const TrainingPhase& phase, const BatchPlan& plan);
  void LogTrainable() const;
  // One pass over the shuffled training set, as train.py's train_one_epoch.
  absl::StatusOr<EpochStats> TrainOneEpoch(int epoch);
  EvalResult Validate(int epoch, const EpochStats& stats);

  const Recipe& recipe_;
  const EpochLoopOptions options_;
  torch::jit::Module& model_;
  torch::jit::Module head_;
  const Backbone& backbone_;
  EpochData& data_;
  const torch::nn::functional::CrossEntropyFuncOptions loss_;
  const PhasePlans& plans_;
  const int64_t num_classes_;
  const Reporter& report_;

  DivergenceMonitor divergence_;
  // Draws every epoch's order; seeded by the job's seed alone.
  std::mt19937_64 order_rng_;
  int64_t total_steps_ = 0;
  int64_t steps_done_ = 0;
  double train_seconds_ = 0;
  // The current phase.
  int freeze_depth_ = 0;
  double base_lr_ = 0;
  int64_t steps_per_epoch_ = 0;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
};

// Leaves in `model` the weights export_weights asks for: the best epoch's
// (restored), or the last's (kept, and then best_epoch and best_summary
// become the last epoch's). Copies that epoch's figures into `metrics`.
void SelectExportedEpoch(const Recipe& recipe, torch::jit::Module& model, EpochsResult* epochs,
                         pb::JobMetrics* metrics);

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_EPOCH_LOOP_H_
