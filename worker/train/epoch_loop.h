// The epochs of a job, as torchvision's train.py runs them: its main loop
// over epochs (the two phases, validation, the best epoch, early stopping)
// and `train_one_epoch` (the steps, with their progress events and the
// divergence monitor of guards.h), with its checkpoints and resume.
#ifndef FT_WORKER_TRAIN_EPOCH_LOOP_H_
#define FT_WORKER_TRAIN_EPOCH_LOOP_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <torch/script.h>
#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "finetune/v1/worker.pb.h"
#include "worker/backbones/backbone.h"
#include "worker/data/images.h"
#include "worker/data/loader.h"
#include "worker/train/checkpoint.h"
#include "worker/train/evaluation.h"
#include "worker/train/guards.h"
#include "worker/train/hooks.h"
#include "worker/train/recipe.h"

namespace ft::util {
class Clock;
}  // namespace ft::util

namespace ft::worker {

class Gang;

// What the epochs train and validate on: decoded images, batched by a
// BatchLoader every epoch, or, when `cached`, the backbone's features of
// every image, computed once.
struct EpochData {
  const ImageSet* train = nullptr;  // not owned
  const ImageSet* val = nullptr;    // not owned
  // The epoch loop sets train_loader's seed and merge_single_tail.
  LoaderOptions train_loader;
  LoaderOptions eval_loader;
  // The whole backbone's features are in train_features/val_features.
  bool cached = false;
  // Or, when above 0, the output of the backbone's first prefix_stages
  // stages (a partly frozen backbone); the epochs run the rest of it.
  int prefix_stages = 0;
  std::string cache_stage;  // the stage whose output is stored, for events
  int64_t cache_bytes = 0;
  bool cache_on_disk = false;  // in a memory-mapped file (CachePlan::spill_dir)
  torch::Tensor train_features, train_labels;  // on the device, when cached
  torch::Tensor val_features, val_labels;      // val_labels on the CPU
  // Either cache: the epochs draw batches from train_features.
  bool precomputed() const { return cached || prefix_stages > 0; }
};

// What to compute once, before the epochs: the whole backbone's features
// (`features`), or the output of its first `prefix_stages` stages.
struct CachePlan {
  bool features = false;
  int prefix_stages = 0;
  // How it is stored (kFloat or kHalf); the epochs widen each batch to float.
  torch::ScalarType dtype = torch::kFloat;
  // Past the budget, it goes to a memory-mapped file in this directory
  // (unlinked at once, so that nothing outlives the job); empty: not cached.
  std::string spill_dir;
};

// EpochData over `train` and `val` (not owned; they must outlive it). With
// a `plan`, computes what it says of both sets now, reported as the "cache"
// phase of `epochs` epochs and logged. Past `budget_bytes` (negative: no
// limit) it goes to a memory-mapped file in plan.spill_dir where that has
// the room, else nothing is cached, and the log says why.
// Computed through the frozen stages' inference graph (BuildFrozenPrefix),
// whose errors it returns.
absl::StatusOr<EpochData> PrepareEpochData(torch::jit::Module& model, const Backbone& backbone,
                                           const ImageSet& train, const ImageSet& val,
                                           const LoaderOptions& train_loader, const LoaderOptions& eval_loader,
                                           const CachePlan& plan, int64_t budget_bytes, int epochs,
                                           torch::Device device, const Reporter& report);

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
// With `ranks` > 1 each batch is split between that many workers
// (PlanBatches).
absl::StatusOr<PhasePlans> PlanPhases(torch::jit::Module& model, const Backbone& backbone, const Recipe& recipe,
                                      int64_t train_images, bool cached, const Reporter& report, int ranks = 1);

struct EpochLoopOptions {
  torch::Device device = torch::kCPU;
  // Seconds between progress events within an epoch.
  double progress_interval_seconds = 2.0;
  // Seconds between mid-epoch checkpoints, each at a step boundary; 0 (or
  // less): epoch ends only. Only with Reporter::SavesCheckpoints().
  double checkpoint_interval_seconds = 300;
  // Measures that interval; not owned; null: the real clock.
  util::Clock* clock = nullptr;
  // Written into every checkpoint and required of one to restore
  // (TrainingFingerprint).
  std::string fingerprint;
  // The most points of an epoch's per-step curve (EpochSummary.step_losses);
  // a longer epoch is summed in windows of equal steps.
  int64_t max_step_points = 1000;
  // A multi-worker job: this rank's group (not owned), or null. See
  // EpochLoop, "Data parallel".
  Gang* gang = nullptr;
};

// What the epochs leave.
struct EpochsResult {
  // Stopped by Reporter::Cancelled() before a step; the rest is partial.
  bool cancelled = false;
  // Stopped by Reporter::Preempted() at a step boundary, once that step's
  // checkpoint went to Reporter::SaveCheckpoint; the rest is partial.
  bool preempted = false;
  // The epoch with the lowest validation loss, its summary and its weights
  // (empty when no epoch improved on infinity), and the last epoch's summary.
  int best_epoch = 0;
  pb::EpochSummary best_summary;
  pb::EpochSummary last_summary;
  std::vector<torch::Tensor> best_weights;
  // Every epoch's summary, as sent.
  std::vector<pb::EpochSummary> history;
  // The validation of the epoch that is exported (the best one, or the last
  // one for --export last): its confusion matrix and predictions. Empty
  // when a checkpoint from before this was kept left it unknown.
  EvalResult exported_val;
};

// Runs a job's epochs. The arguments are not owned and must outlive the
// loop; `model` is trained in place. One thread.
//
// Checkpoints hold everything that decides the rest of the run (see
// Checkpoint in epoch_loop.cc), so that a loop restored from one, in a new
// process with the same thread count, trains exactly what the loop that
// wrote it would have trained, bit for bit.
//
// Data parallel (options.gang): every rank runs this loop over the same
// seeded order, and trains on its share of each global batch (SplitShare),
// each image augmented as on one worker. Its loss is scaled by its share of
// the batch (with class weights: of the batch's weight, once the all-reduce
// has summed it), and after backward the gradients are summed across the ranks
// (bucketed all-reduce), which gives every rank the whole batch's mean
// gradient; the optimisers then take identical steps. The step's loss,
// correct count and images travel in the same all-reduce, so every rank
// keeps the same sums, curve and divergence verdict, and with them two
// flags: a rank preempted (or stopped) and rank 0 cancelled; every rank
// acts on them at the next step boundary. BatchNorm keeps each rank's
// statistics; rank 0's are broadcast before each validation, which every
// rank runs alike. Rank 0 alone has checkpoint and event hooks. A failed
// collective throws GangError.
class EpochLoop {
 public:
  EpochLoop(const Recipe& recipe, const EpochLoopOptions& options, torch::jit::Module& model,
            const Backbone& backbone, EpochData& data, torch::nn::functional::CrossEntropyFuncOptions loss,
            const PhasePlans& plans, int64_t num_classes, const Reporter& report);
  EpochLoop(const EpochLoop&) = delete;
  EpochLoop& operator=(const EpochLoop&) = delete;

  // Puts the loop where checkpoint `bytes` (consumed) stands: the model's
  // parameters and buffers, the phase and its optimiser, the random
  // streams, the epoch and step, the partial epoch, the best epoch, the
  // history and the counters; Run then continues from there. Says
  // "resumed from checkpoint at epoch E, step S". Call before Run, at most
  // once. DATA_LOSS when the bytes do not parse; FAILED_PRECONDITION when
  // they are of another job, spec or dataset (the fingerprint), or do not
  // fit this model (naming the tensor). Never throws.
  absl::Status Restore(std::string bytes);

  // Trains epochs 1..spec.epochs (fewer with early stopping; from where
  // Restore left it), each followed by validation, its checkpoint, and a
  // summary through Reporter::Epoch, and counts the trained images and the
  // completed epochs in `metrics`. Call once.
  // FAILED_PRECONDITION "training diverged at epoch E..." when a step's
  // loss, a weight or the validation loss is not finite, or the loss
  // explodes; an epoch end's checkpoint that cannot be stored fails with
  // SaveCheckpoint's code and "the checkpoint of epoch E could not be
  // stored: ...". Throws what LibTorch and the loader throw.
  absl::StatusOr<EpochsResult> Run(pb::JobMetrics* metrics);

 private:
  struct EpochStats {
    bool cancelled = false;
    bool preempted = false;
    std::chrono::steady_clock::time_point start;
    // The steps only, without validation, including those before a resume.
    double train_seconds = 0;
    double seconds_before = 0;  // of train_seconds, before the resume
    double loss_sum = 0;        // per-image loss, summed
    int64_t correct = 0;
    int64_t seen = 0;
    double lr = 0;  // at the last step
    double loader_wait_seconds = 0;
    // The per-step curve (EpochSummary.step_losses): its points so far, and
    // the window of steps being summed into the next one.
    std::vector<float> step_losses, step_lrs;
    double window_loss = 0;
    int64_t window_steps = 0;
  };
  // Where Restore left the loop.
  struct Resume {
    int epoch = 1;           // the first epoch Run trains
    int64_t step = 0;        // steps of it already done
    EpochStats stats;        // its partial sums
    int64_t trained_images = 0;
    int epochs_completed = 0;
    bool stopped_early = false;  // after the checkpoint's epoch
  };

  // The first phase, or the fine-tuning one: its freeze depth, rate and
  // batches, a fresh optimiser, and its frozen stages' inference graph.
  absl::Status EnterPhase(bool finetune);
  // The phase that epoch `epoch` trains in.
  bool FineTunes(int epoch) const;
  // Early stopping ends the job after epoch `epoch`.
  bool StopsEarly(int epoch) const;
  void LogTrainable() const;
  // One pass over the shuffled training set, as train.py's train_one_epoch,
  // from step `first_step` on with the partial sums `stats`.
  absl::StatusOr<EpochStats> TrainOneEpoch(int epoch, int64_t first_step, EpochStats stats);
  // The validation split, as train.py's evaluate. In a multi-worker job
  // each rank evaluates its share of the one-worker batches
  // (RankShareOfBatches), and the shares are summed across the ranks
  // (GatherShares): every rank ends with one worker's result.
  EvalResult Validate(int epoch, const EpochStats& stats);
  EvalResult ValidateRange(EvalRange range);
  // Every rank's `mine` (images `range` of `n`), summed through the gang.
  // Throws GangError.
  EvalResult GatherShares(const EvalResult& mine, EvalRange range, int64_t n);
  // The state at `position` as checkpoint bytes, `stats` being the current
  // epoch's partial sums (mid-epoch).
  std::string Checkpoint(const CheckpointPosition& position, const EpochStats& stats) const;
  // Makes a checkpoint and hands it to Reporter::SaveCheckpoint.
  absl::Status SaveCheckpoint(const CheckpointPosition& position, const EpochStats& stats);
  absl::Status RestoreFrom(CheckpointReader& reader);
  absl::Time Now() const;
  // The logits of a training batch `x`: images, or what the cache holds for
  // them. With frozen leading stages and no cache, those stages run
  // without autograd (they train nothing) before the rest.
  torch::Tensor Logits(const torch::Tensor& x);

  const Recipe& recipe_;
  const EpochLoopOptions options_;
  torch::jit::Module& model_;
  torch::jit::Module head_;
  // The backbone's forward_stages, when it has one.
  c10::optional<torch::jit::Method> stages_;
  // Without a cache: the phase's frozen stages as an inference graph
  // (BuildFrozenPrefix) of prefix_stages_ stages (-1: the whole backbone).
  c10::optional<torch::jit::Module> prefix_;
  int prefix_stages_ = 0;
  // Validation fell back to the training module once, and said so.
  bool warned_unfrozen_validation_ = false;
  // ... or ran unoptimised (BuildFrozenPrefix's note), and said so.
  bool warned_unoptimised_validation_ = false;
  // A multi-worker job said which validation images each rank evaluates.
  bool logged_validation_share_ = false;
  const Backbone& backbone_;
  EpochData& data_;
  const torch::nn::functional::CrossEntropyFuncOptions loss_;
  const PhasePlans& plans_;
  const int64_t num_classes_;
  const Reporter& report_;

  DivergenceMonitor divergence_;
  // Draws every epoch's order; seeded by the job's seed alone.
  std::mt19937_64 order_rng_;
  // order_rng_ as the current epoch began, before it drew the order.
  std::mt19937_64 epoch_order_rng_;
  int64_t total_steps_ = 0;
  int64_t steps_done_ = 0;
  double train_seconds_ = 0;
  // The current phase.
  bool finetune_ = false;
  int freeze_depth_ = 0;
  double base_lr_ = 0;
  int64_t steps_per_epoch_ = 0;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;

  // What the epochs so far leave, the best among them, and early stopping.
  EpochsResult result_;
  double best_loss_;
  int since_best_ = 0;
  pb::JobMetrics* metrics_ = nullptr;  // Run's
  std::optional<Resume> resume_;
  // The state is the newest checkpoint's: no step since it was made.
  bool checkpointed_ = false;
  absl::Time last_checkpoint_;
  // Data parallel: what the ranks agreed at the last step.
  bool agreed_preempt_ = false;
  bool agreed_cancel_ = false;
  int rank_ = 0;
  int ranks_ = 1;
  // Rank 0's parameters and buffers (or its buffers alone) on every rank.
  void BroadcastState(bool parameters);
};

// Leaves in `model` the weights export_weights asks for: the best epoch's
// (restored), or the last's (kept, and then best_epoch and best_summary
// become the last epoch's). Copies that epoch's figures into `metrics`.
void SelectExportedEpoch(const Recipe& recipe, torch::jit::Module& model, EpochsResult* epochs,
                         pb::JobMetrics* metrics);

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_EPOCH_LOOP_H_
