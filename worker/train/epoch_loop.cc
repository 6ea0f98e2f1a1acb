#include "worker/train/epoch_loop.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/util/status.h"

namespace ft::worker {
namespace {

using Clock = std::chrono::steady_clock;

// Mixed into the seed of the epochs' order, so that it differs from the
// streams the seed drives elsewhere.
constexpr uint64_t kOrderSeedMix = 0x5DEECE66DULL;
// The augmentation seed of epoch e is seed * kEpochSeedStride + e.
constexpr uint64_t kEpochSeedStride = 1000003ULL;

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

std::vector<torch::Tensor> TrainableParameters(const torch::jit::Module& model) {
  std::vector<torch::Tensor> out;
  for (const auto& p : model.parameters()) {
    if (p.requires_grad()) out.push_back(p);
  }
  return out;
}

void SetLearningRate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

// A copy of every parameter and buffer, to restore the best epoch.
std::vector<torch::Tensor> Snapshot(const torch::jit::Module& model) {
  std::vector<torch::Tensor> out;
  for (const auto& p : model.parameters()) out.push_back(p.detach().clone());
  for (const auto& b : model.buffers()) out.push_back(b.detach().clone());
  return out;
}

void Restore(torch::jit::Module& model, const std::vector<torch::Tensor>& snapshot) {
  torch::NoGradGuard no_grad;
  size_t i = 0;
  for (const auto& p : model.parameters()) p.copy_(snapshot[i++]);
  for (const auto& b : model.buffers()) b.copy_(snapshot[i++]);
}

absl::Status Diverged(int epoch, const std::string& what, double lr) {
  return absl::FailedPreconditionError(
      absl::StrCat("training diverged at epoch ", epoch, ": ", what, " (", DivergenceAdvice(lr), ")"));
}

}  // namespace

EpochData PrepareEpochData(torch::jit::Module& model, const ImageSet& train, const ImageSet& val,
                           const LoaderOptions& train_loader, const LoaderOptions& eval_loader, bool cache,
                           int64_t feature_dim, int epochs, torch::Device device, const Reporter& report) {
  EpochData data;
  data.train = &train;
  data.val = &val;
  data.train_loader = train_loader;
  data.eval_loader = eval_loader;
  data.cached = cache;
  if (cache) {
    const auto t0 = Clock::now();
    pb::Progress p;
    p.set_phase("cache");
    p.set_epochs(epochs);
    report.Progress(p);
    data.train_features = ComputeFeatures(model, train, eval_loader, device);
    data.val_features = ComputeFeatures(model, val, eval_loader, device);
    report.Info(absl::StrFormat(
        "backbone frozen and transform deterministic: cached %d-d features of %d images in %.1fs", feature_dim, data.train_features.size(0) + data.val_features.size(0), Seconds(t0)));
  }
  data.train_labels = torch::tensor(train.labels).to(device);
  data.val_labels = torch::tensor(val.labels);
  return data;
}

absl::StatusOr<PhasePlans> PlanPhases(torch::jit::Module& model, const Backbone& backbone, const Recipe& recipe,
                                      int64_t train_images, bool cached, const Reporter& report) {
  const pb::JobSpec& spec = recipe.spec();
  // A last batch of one image would leave a train-mode BatchNorm whose input
  // is 1x1 with one value per channel (NaN running variance), so it is then
  // merged into the one before.
  auto plan_batches = [&](int depth, const char* phase) -> absl::StatusOr<BatchPlan> {
    std::string single_value_bn;
    const bool one_image_batch = spec.batch_size() == 1 || train_images % spec.batch_size() == 1;
    if (!cached && one_image_batch) {
      ApplyFreeze(model, backbone, depth);
      FT_ASSIGN_OR_RETURN(single_value_bn, SingleValueBatchNorm(model, spec.image_size()));
    }
    FT_ASSIGN_OR_RETURN(BatchPlan plan,
                        PlanBatches(train_images, spec.batch_size(), single_value_bn, spec.image_size()));
    if (plan.merged_tail) {
      report.Info(absl::StrCat("the last training batch would hold 1 image, and the train-mode BatchNorm ",
                               single_value_bn, " would see one value per channel at ", spec.image_size(), " px: ",
                               phase, " merges that image into the batch before it (", plan.num_batches,
                               " batches an epoch, the last of ", plan.last_batch_size, " images)"));
    }
    return plan;
  };
  PhasePlans plans;
  FT_ASSIGN_OR_RETURN(plans.first, plan_batches(recipe.first_phase().freeze_depth, "every epoch"));
  plans.finetune = plans.first;
  if (recipe.HasFineTuning()) {
    FT_ASSIGN_OR_RETURN(plans.finetune, plan_batches(recipe.finetune_phase().freeze_depth, "the fine-tuning phase"));
  }
  return plans;
}

EpochLoop::EpochLoop(const Recipe& recipe, const EpochLoopOptions& options, torch::jit::Module& model,
                     const Backbone& backbone, EpochData& data, torch::nn::functional::CrossEntropyFuncOptions loss,
                     const PhasePlans& plans, int64_t num_classes, const Reporter& report)
    : recipe_(recipe),
      options_(options),
      model_(model),
      head_(model.attr("head").toModule()),
      backbone_(backbone),
      data_(data),
      loss_(std::move(loss)),
      plans_(plans),
      num_classes_(num_classes),
      report_(report),
      divergence_(num_classes),
      order_rng_(static_cast<uint64_t>(recipe.spec().seed()) ^ kOrderSeedMix) {
  const int first_phase_epochs = recipe.FirstPhaseEpochs();
  total_steps_ = plans.first.num_batches * first_phase_epochs +
                 plans.finetune.num_batches * (recipe.spec().epochs() - first_phase_epochs);
}

void EpochLoop::EnterPhase(const TrainingPhase& phase, const BatchPlan& plan) {
  freeze_depth_ = phase.freeze_depth;
  base_lr_ = phase.base_lr;
  ApplyFreeze(model_, backbone_, freeze_depth_);
  optimizer_ = recipe_.MakeOptimizer(TrainableParameters(model_), base_lr_);
  steps_per_epoch_ = plan.num_batches;
  data_.train_loader.merge_single_tail = plan.merged_tail;
}

void EpochLoop::LogTrainable() const {
  int64_t trainable = 0, total = 0;
  for (const auto& p : model_.parameters()) {
    total += p.numel();
    if (p.requires_grad()) trainable += p.numel();
  }
  report_.Info(absl::StrFormat("%s: %d of %d parameters trainable (freeze_depth %d), lr %g", recipe_.spec().backbone(),
                               trainable, total, freeze_depth_, base_lr_));
}

absl::StatusOr<EpochLoop::EpochStats> EpochLoop::TrainOneEpoch(int epoch) {
  const pb::JobSpec& spec = recipe_.spec();
  std::vector<int64_t> order(data_.train->images.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), order_rng_);
  ApplyFreeze(model_, backbone_, freeze_depth_);
  std::unique_ptr<BatchLoader> loader;
  torch::Tensor order_tensor;
  if (data_.cached) {
    order_tensor = torch::tensor(order).to(options_.device);
  } else {
    data_.train_loader.seed = static_cast<uint64_t>(spec.seed()) * kEpochSeedStride + static_cast<uint64_t>(epoch);
    loader = std::make_unique<BatchLoader>(data_.train, order, data_.train_loader);
  }
  EpochStats stats;
  stats.start = Clock::now();
  stats.lr = base_lr_;
  auto last_report = Clock::now();
  int64_t step = 0;
  while (true) {
    torch::Tensor x, y;
    if (data_.cached) {
      if (step >= steps_per_epoch_) break;
      auto idx = order_tensor.slice(0, step * spec.batch_size(), (step + 1) * spec.batch_size());
      x = data_.train_features.index_select(0, idx);
      y = data_.train_labels.index_select(0, idx);
    } else {
      auto batch = loader->Next();
      if (!batch) break;
      x = batch->images.to(options_.device, /*non_blocking=*/true);
      y = batch->labels.to(options_.device, /*non_blocking=*/true);
    }
    if (report_.Cancelled()) {
      stats.cancelled = true;
      return stats;
    }
    const auto step_start = Clock::now();
    stats.lr = recipe_.LearningRateAt((epoch - 1) + static_cast<double>(step) / steps_per_epoch_, base_lr_);
    SetLearningRate(*optimizer_, stats.lr);
    auto logits = data_.cached ? head_.forward({x}).toTensor() : model_.forward({x}).toTensor();
    auto loss = torch::nn::functional::cross_entropy(logits, y, loss_);
    optimizer_->zero_grad();
    loss.backward();
    if (spec.grad_clip_norm() > 0) {
      torch::nn::utils::clip_grad_norm_(TrainableParameters(model_), spec.grad_clip_norm());
    }
    optimizer_->step();
    ++step;
    ++steps_done_;
    const int64_t n = y.size(0);
    const double step_loss = loss.item<double>();
    FT_RETURN_IF_ERROR(divergence_.Observe(epoch, step, step_loss, stats.lr));
    stats.loss_sum += step_loss * n;
    stats.correct += logits.argmax(1).eq(y).sum().item<int64_t>();
    stats.seen += n;
    report_.Step(Seconds(step_start), n);
    if (Seconds(last_report) >= options_.progress_interval_seconds || step == steps_per_epoch_) {
      last_report = Clock::now();
      const double elapsed = train_seconds_ + Seconds(stats.start);
      pb::Progress p;
      p.set_phase("train");
      p.set_epoch(epoch);
      p.set_epochs(spec.epochs());
      p.set_step(step);
      p.set_steps_per_epoch(steps_per_epoch_);
      p.set_loss(static_cast<float>(stats.loss_sum / stats.seen));
      p.set_images_per_second(static_cast<float>(stats.seen / std::max(1e-9, Seconds(stats.start))));
      p.set_eta_seconds(static_cast<float>(elapsed / steps_done_ * (total_steps_ - steps_done_)));
      report_.Progress(p);
    }
  }
  stats.train_seconds = Seconds(stats.start);
  train_seconds_ += stats.train_seconds;
  stats.loader_wait_seconds = loader ? loader->wait_seconds() : 0.0;
  return stats;
}

EvalResult EpochLoop::Validate(int epoch, const EpochStats& stats) {
  pb::Progress vp;
  vp.set_phase("validate");
  vp.set_epoch(epoch);
  vp.set_epochs(recipe_.spec().epochs());
  vp.set_step(steps_per_epoch_);
  vp.set_steps_per_epoch(steps_per_epoch_);
  vp.set_loss(static_cast<float>(stats.loss_sum / std::max<int64_t>(1, stats.seen)));
  report_.Progress(vp);
  if (data_.cached) return EvaluateFeatures(head_, data_.val_features, data_.val_labels, num_classes_);
  return Evaluate(model_, *data_.val, data_.eval_loader, options_.device, num_classes_);
}

absl::StatusOr<EpochsResult> EpochLoop::Run(pb::JobMetrics* metrics) {
  const pb::JobSpec& spec = recipe_.spec();
  EnterPhase(recipe_.first_phase(), plans_.first);
  LogTrainable();
  EpochsResult result;
  double best_loss = std::numeric_limits<double>::infinity();
  int since_best = 0;
  for (int epoch = 1; epoch <= spec.epochs(); ++epoch) {
    if (recipe_.StartsFineTuning(epoch)) {
      // The classic second phase: unfreeze deeper stages, lower learning rate, fresh optimiser.
      EnterPhase(recipe_.finetune_phase(), plans_.finetune);
      report_.Info(absl::StrCat("epoch ", epoch, ": fine-tuning phase"));
      LogTrainable();
    }
    FT_ASSIGN_OR_RETURN(const EpochStats stats, TrainOneEpoch(epoch));
    if (stats.cancelled) {
      result.cancelled = true;
      return result;
    }
    const EvalResult val = Validate(epoch, stats);
    // Nothing non-finite survives an epoch: not a weight, not the val loss.
    if (auto bad = FirstNonFiniteTensor(model_)) return Diverged(epoch, *bad, stats.lr);
    if (!std::isfinite(val.loss)) {
      return Diverged(epoch, absl::StrCat("validation loss is ", std::isnan(val.loss) ? "NaN" : "infinite"),
                      stats.lr);
    }
    const int64_t seen = std::max<int64_t>(1, stats.seen);
    pb::EpochSummary summary;
    summary.set_epoch(epoch);
    summary.set_train_loss(static_cast<float>(stats.loss_sum / seen));
    summary.set_train_accuracy(static_cast<float>(static_cast<double>(stats.correct) / seen));
    summary.set_val_loss(static_cast<float>(val.loss));
    summary.set_val_accuracy(static_cast<float>(val.top1));
    summary.set_val_top5_accuracy(static_cast<float>(val.top5));
    summary.set_learning_rate(static_cast<float>(stats.lr));
    summary.set_images_per_second(static_cast<float>(stats.seen / std::max(1e-9, stats.train_seconds)));
    summary.set_epoch_seconds(static_cast<float>(Seconds(stats.start)));
    summary.set_loader_wait_seconds(static_cast<float>(stats.loader_wait_seconds));
    summary.set_freeze_depth(freeze_depth_);
    summary.set_features_cached(data_.cached);
    metrics->set_trained_images(metrics->trained_images() + stats.seen);
    metrics->set_epochs_completed(epoch);
    // Never a NaN epoch, even if one got this far.
    const bool improved = std::isfinite(val.loss) && val.loss < best_loss;
    if (improved) {
      best_loss = val.loss;
      result.best_epoch = epoch;
      since_best = 0;
      result.best_weights = Snapshot(model_);
      result.best_summary = summary;
    } else {
      ++since_best;
    }
    summary.set_best(improved);
    result.last_summary = summary;
    report_.Epoch(summary);
    result.history.push_back(summary);
    if (spec.early_stopping_patience() > 0 && since_best >= spec.early_stopping_patience() &&
        epoch < spec.epochs()) {
      report_.Info(absl::StrCat("early stopping after epoch ", epoch, ": val loss has not improved for ", since_best,
                                " epochs; exporting epoch ", result.best_epoch));
      break;
    }
  }
  return result;
}

void SelectExportedEpoch(const Recipe& recipe, torch::jit::Module& model, EpochsResult* epochs,
                         pb::JobMetrics* metrics) {
  if (recipe.exports_last_epoch()) {
    epochs->best_epoch = static_cast<int>(metrics->epochs_completed());
    epochs->best_summary = epochs->last_summary;
  } else if (!epochs->best_weights.empty()) {
    Restore(model, epochs->best_weights);
  }
  const pb::EpochSummary& exported = epochs->best_summary;
  metrics->set_best_epoch(epochs->best_epoch);
  metrics->set_val_accuracy(exported.val_accuracy());
  metrics->set_val_loss(exported.val_loss());
  metrics->set_val_top5_accuracy(exported.val_top5_accuracy());
  metrics->set_train_loss(exported.train_loss());
  metrics->set_train_accuracy(exported.train_accuracy());
}

}  // namespace ft::worker
