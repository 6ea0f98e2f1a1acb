// How training reports to its caller: the hooks the caller sets, and the
// Reporter through which every part of training calls them.
#ifndef FT_WORKER_TRAIN_HOOKS_H_
#define FT_WORKER_TRAIN_HOOKS_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "finetune/v1/worker.pb.h"

namespace ft::worker {

namespace pb = ::finetune::v1;

// Where a checkpoint stands: after `step` optimiser steps of `epoch`
// (1-based); `epoch_end` when that epoch is complete, validation included.
struct CheckpointPosition {
  int epoch = 0;
  int64_t step = 0;
  bool epoch_end = false;
};

// How the trainer reports to its caller. Every hook may be empty.
struct TrainerHooks {
  std::function<void(const pb::Progress&)> on_progress;
  std::function<void(const pb::EpochSummary&)> on_epoch;
  std::function<void(const std::string& level, const std::string& message)> on_log;
  // After each optimiser step: its wall time and batch size.
  std::function<void(double seconds, int64_t images)> on_step;
  // Polled between steps; true stops training (the result is then CANCELLED).
  // A cancelled job writes no checkpoint.
  std::function<bool()> cancelled;
  // Polled between steps; true stops training at that step boundary after a
  // checkpoint (save_checkpoint), and the result says `preempted`.
  std::function<bool()> preempted;
  // Stores a checkpoint (the bytes of a TrainingState, see checkpoint.h):
  // after each epoch's validation and before its on_epoch, every
  // checkpoint_interval_seconds at a step boundary, and when preempted.
  // An error at an epoch end fails the job with it (its summary is then
  // never sent); mid-epoch it is a warning. Empty: no checkpoints are made.
  std::function<absl::Status(const CheckpointPosition& position, const std::string& bytes)> save_checkpoint;
  // Fetches a stored model's model.pt for model:// weights; returns its path.
  std::function<absl::StatusOr<std::string>(const std::string& model_id)> fetch_model;
};

// Calls the hooks, skipping empty ones. Holds a reference: `hooks` must
// outlive it. Called from the training thread only.
class Reporter {
 public:
  explicit Reporter(const TrainerHooks& hooks) : hooks_(hooks) {}

  void Log(const std::string& level, const std::string& message) const {
    if (hooks_.on_log) hooks_.on_log(level, message);
  }
  void Info(const std::string& message) const { Log("info", message); }
  void Progress(const pb::Progress& progress) const {
    if (hooks_.on_progress) hooks_.on_progress(progress);
  }
  void Epoch(const pb::EpochSummary& summary) const {
    if (hooks_.on_epoch) hooks_.on_epoch(summary);
  }
  void Step(double seconds, int64_t images) const {
    if (hooks_.on_step) hooks_.on_step(seconds, images);
  }
  bool Cancelled() const { return hooks_.cancelled && hooks_.cancelled(); }
  bool Preempted() const { return hooks_.preempted && hooks_.preempted(); }
  bool SavesCheckpoints() const { return static_cast<bool>(hooks_.save_checkpoint); }
  absl::Status SaveCheckpoint(const CheckpointPosition& position, const std::string& bytes) const {
    return hooks_.save_checkpoint ? hooks_.save_checkpoint(position, bytes) : absl::OkStatus();
  }

 private:
  const TrainerHooks& hooks_;
};

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_HOOKS_H_
