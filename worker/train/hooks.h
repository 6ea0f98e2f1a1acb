// How training reports to its caller: the hooks the caller sets, and the
// Reporter through which every part of training calls them.
#ifndef FT_WORKER_TRAIN_HOOKS_H_
#define FT_WORKER_TRAIN_HOOKS_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "finetune/v1/worker.pb.h"

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

 private:
  const TrainerHooks& hooks_;
};

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_HOOKS_H_
