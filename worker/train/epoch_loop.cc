#include "worker/train/epoch_loop.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <numeric>
#include <sstream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/util/clock.h"
#include "common/util/files.h"
#include "common/util/log.h"
#include "common/util/status.h"
#include "worker/backbones/jit_modules.h"
#include "worker/train/first_line.h"
#include "worker/train/frozen_prefix.h"
#include "worker/train/gang.h"

namespace ft::worker {
namespace {

using Clock = std::chrono::steady_clock;

// Mixed into the seed of the epochs' order, so that it differs from the
// streams the seed drives elsewhere.
constexpr uint64_t kOrderSeedMix = 0x5DEECE66DULL;
// The augmentation seed of epoch e is seed * kEpochSeedStride + e.
constexpr uint64_t kEpochSeedStride = 1000003ULL;
// The steps each point of an epoch of `steps` steps stands for, when it has
// at most `max_points`.
int64_t StepsPerPoint(int64_t steps, int64_t max_points) {
  max_points = std::max<int64_t>(1, max_points);
  return std::max<int64_t>(1, (steps + max_points - 1) / max_points);
}

// A float tensor's values (on any device).
std::vector<float> ToFloats(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kCPU).to(torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

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

// Before each backward pass: no gradient left from the step before
// (PyTorch's zero_grad(set_to_none=True)).
void ClearGradients(torch::optim::Optimizer& optimizer) {
  for (auto& group : optimizer.param_groups()) {
    for (auto& p : group.params()) p.mutable_grad().reset();
  }
}

torch::Tensor GeneratorState(at::Generator generator) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

void SetGeneratorState(at::Generator generator, const torch::Tensor& state) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state.to(torch::kCPU));
}

std::string ShapeOf(const torch::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "] ", std::string(c10::toString(t.scalar_type())));
}

absl::Status Diverged(int epoch, const std::string& what, double lr) {
  return absl::FailedPreconditionError(
      absl::StrCat("training diverged at epoch ", epoch, ": ", what, " (", DivergenceAdvice(lr), ")"));
}

// A tensor of `shape` and `dtype` on a file made in `dir`, mapped shared and
// unlinked at once: its blocks are allocated now (so that a full disk is an
// error here, not a SIGBUS later), and go when the tensor does.
absl::StatusOr<torch::Tensor> MappedTensor(const std::string& dir, const std::vector<int64_t>& shape,
                                           torch::ScalarType dtype) {
  const int64_t bytes = std::max<int64_t>(
      1, c10::multiply_integers(shape) * static_cast<int64_t>(c10::elementSize(dtype)));
  FT_RETURN_IF_ERROR(util::MakeDirs(dir));
  std::string path = dir + "/activation-cache.XXXXXX";
  const int fd = ::mkostemp(path.data(), O_CLOEXEC);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot create a file in ", dir, ": ", std::strerror(errno)));
  ::unlink(path.c_str());
  if (const int err = ::posix_fallocate(fd, 0, bytes); err != 0) {
    ::close(fd);
    return absl::ResourceExhaustedError(
        absl::StrFormat("cannot allocate %.0f MiB in %s: %s", bytes / 1048576.0, dir, std::strerror(err)));
  }
  void* mapped = ::mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (mapped == MAP_FAILED) return absl::InternalError(absl::StrCat("cannot map the cache: ", std::strerror(errno)));
  return torch::from_blob(
      mapped, shape, [bytes](void* p) { ::munmap(p, static_cast<size_t>(bytes)); },
      torch::TensorOptions().dtype(dtype));
}

}  // namespace

absl::StatusOr<EpochData> PrepareEpochData(torch::jit::Module& model, const Backbone& backbone,
                                           const ImageSet& train, const ImageSet& val,
                                           const LoaderOptions& train_loader, const LoaderOptions& eval_loader,
                                           const CachePlan& plan, int64_t budget_bytes, int epochs,
                                           torch::Device device, const Reporter& report) {
  EpochData data;
  data.train = &train;
  data.val = &val;
  data.train_loader = train_loader;
  data.eval_loader = eval_loader;
  data.train_labels = torch::tensor(train.labels).to(device);
  data.val_labels = torch::tensor(val.labels);
  if (!plan.features && plan.prefix_stages <= 0) return data;
  const int k = plan.features ? 0 : plan.prefix_stages;
  const std::string stage = plan.features ? "features" : backbone.stage_names[static_cast<size_t>(k - 1)];
  // Computed through the frozen stages' inference graph.
  std::string unoptimised;
  auto built = BuildFrozenPrefix(model, k == 0 ? -1 : k, eval_loader.transform.image_size, &unoptimised);
  if (!unoptimised.empty()) {
    report.Info(absl::StrCat("the frozen stages run frozen but not optimised for inference: ", unoptimised));
  }
  if (!built.ok()) {
    report.Log("warning", absl::StrCat("not caching the output of ", stage, ": ", built.status().message()));
    return data;
  }
  torch::jit::Module& prefix = *built;
  // The bytes it would take, from one image's worth.
  std::vector<int64_t> image_shape;
  {
    torch::NoGradGuard no_grad;
    const int64_t size = eval_loader.transform.image_size;
    auto out = prefix.forward({torch::zeros({2, 3, size, size}, torch::TensorOptions().device(device))}).toTensor();
    image_shape = out[0].sizes().vec();
  }
  const int64_t per_image = c10::multiply_integers(image_shape) * static_cast<int64_t>(c10::elementSize(plan.dtype));
  const int64_t images = static_cast<int64_t>(train.images.size() + val.images.size());
  const int64_t bytes = per_image * images;
  const bool over_budget = budget_bytes >= 0 && bytes > budget_bytes;
  auto not_caching = [&](const std::string& why) {
    report.Info(absl::StrFormat("not caching the output of %s: %d images would take %.0f MiB, over the %.0f MiB left "
                                "of the worker's --decode-cache-mb%s; every epoch runs %s",
                                stage, images, bytes / 1048576.0, budget_bytes / 1048576.0, why,
                                k == 0 ? "the backbone" : "the frozen stages"));
  };
  if (over_budget && plan.spill_dir.empty()) {
    not_caching("");
    return data;
  }
  // Over the budget, on a file mapped shared: the kernel writes its pages
  // back and drops them under memory pressure, as it cannot anonymous memory.
  auto allocate = [&](size_t n) -> absl::StatusOr<torch::Tensor> {
    std::vector<int64_t> shape = {static_cast<int64_t>(n)};
    shape.insert(shape.end(), image_shape.begin(), image_shape.end());
    if (!over_budget) return torch::empty(shape, torch::TensorOptions().dtype(plan.dtype).device(device));
    return MappedTensor(plan.spill_dir, shape, plan.dtype);
  };
  auto train_into = allocate(train.images.size());
  auto val_into = train_into.ok() ? allocate(val.images.size()) : train_into;
  if (!val_into.ok()) {
    not_caching(absl::StrCat(", and no file of that size in ", plan.spill_dir, ": ", val_into.status().message()));
    return data;
  }
  const auto t0 = Clock::now();
  pb::Progress p;
  p.set_phase("cache");
  p.set_epochs(epochs);
  report.Progress(p);
  data.train_features = ComputeFeatures(prefix, train, eval_loader, device, *std::move(train_into));
  data.val_features = ComputeFeatures(prefix, val, eval_loader, device, *std::move(val_into));
  data.cache_on_disk = over_budget;
  data.cached = plan.features;
  data.prefix_stages = k;
  data.cache_stage = stage;
  data.cache_bytes = bytes;
  const std::string where = absl::StrFormat(
      "%.1f MiB of %s%s", bytes / 1048576.0, plan.dtype == torch::kHalf ? "float16" : "float32",
      over_budget ? absl::StrCat(", in a memory-mapped file in ", plan.spill_dir, " (over --decode-cache-mb)") : "");
  if (k == 0) {
    report.Info(absl::StrFormat(
        "backbone frozen and transform deterministic: cached %d-d features of %d images (%s) in %.1fs",
        data.train_features.size(1), images, where, Seconds(t0)));
  } else {
    report.Info(absl::StrFormat(
        "stages %s to %s frozen and transform deterministic: cached the output of %s, [%s] per image, of %d images "
        "(%s) in %.1fs; every epoch trains the rest on it",
        backbone.stage_names.front(), stage, stage, absl::StrJoin(data.train_features.sizes().slice(1), ", "), images,
        where, Seconds(t0)));
  }
  return data;
}

absl::StatusOr<PhasePlans> PlanPhases(torch::jit::Module& model, const Backbone& backbone, const Recipe& recipe,
                                      int64_t train_images, bool cached, const Reporter& report, int ranks) {
  const pb::JobSpec& spec = recipe.spec();
  // A last batch of one image would leave a train-mode BatchNorm whose input
  // is 1x1 with one value per channel (NaN running variance), so it is then
  // merged into the one before.
  ranks = std::max(1, ranks);
  auto plan_batches = [&](int depth, const char* phase) -> absl::StatusOr<BatchPlan> {
    std::string single_value_bn;
    // A batch, or a rank's share of one, that may hold a single image.
    const int64_t last = train_images - (train_images - 1) / spec.batch_size() * spec.batch_size();
    const bool one_image_batch = spec.batch_size() / ranks < 2 || last / ranks < 2;
    if (!cached && one_image_batch) {
      ApplyFreeze(model, backbone, depth);
      FT_ASSIGN_OR_RETURN(single_value_bn, SingleValueBatchNorm(model, spec.image_size()));
    }
    FT_ASSIGN_OR_RETURN(BatchPlan plan,
                        PlanBatches(train_images, spec.batch_size(), single_value_bn, spec.image_size(), ranks));
    if (plan.merged_tail && ranks > 1) {
      report.Info(absl::StrCat("the last training batch would leave a worker with too few images: ", phase,
                               " merges it into the batch before it (", plan.num_batches,
                               " batches an epoch, the last of ", plan.last_batch_size, " images)"));
    } else if (plan.merged_tail) {
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
      stages_(backbone.staged ? model.attr("backbone").toModule().find_method(kForwardStages) : c10::nullopt),
      backbone_(backbone),
      data_(data),
      loss_(std::move(loss)),
      plans_(plans),
      num_classes_(num_classes),
      report_(report),
      divergence_(num_classes),
      order_rng_(static_cast<uint64_t>(recipe.spec().seed()) ^ kOrderSeedMix),
      epoch_order_rng_(order_rng_),
      best_loss_(std::numeric_limits<double>::infinity()),
      rank_(options.gang != nullptr ? options.gang->rank() : 0),
      ranks_(options.gang != nullptr ? options.gang->world_size() : 1) {
  const int first_phase_epochs = recipe.FirstPhaseEpochs();
  total_steps_ = plans.first.num_batches * first_phase_epochs +
                 plans.finetune.num_batches * (recipe.spec().epochs() - first_phase_epochs);
}

absl::Time EpochLoop::Now() const { return options_.clock != nullptr ? options_.clock->Now() : absl::Now(); }

bool EpochLoop::FineTunes(int epoch) const {
  const int unfreeze_at = recipe_.spec().unfreeze_at();
  return unfreeze_at > 0 && epoch >= unfreeze_at;
}

bool EpochLoop::StopsEarly(int epoch) const {
  const pb::JobSpec& spec = recipe_.spec();
  return spec.early_stopping_patience() > 0 && since_best_ >= spec.early_stopping_patience() &&
         epoch < spec.epochs();
}

absl::Status EpochLoop::EnterPhase(bool finetune) {
  const TrainingPhase phase = finetune ? recipe_.finetune_phase() : recipe_.first_phase();
  const BatchPlan& plan = finetune ? plans_.finetune : plans_.first;
  finetune_ = finetune;
  freeze_depth_ = phase.freeze_depth;
  base_lr_ = phase.base_lr;
  ApplyFreeze(model_, backbone_, freeze_depth_);
  optimizer_ = recipe_.MakeOptimizer(TrainableParameters(model_), base_lr_);
  steps_per_epoch_ = plan.num_batches;
  data_.train_loader.merge_tail = plan.merged_tail;
  data_.train_loader.shard = rank_;
  data_.train_loader.shards = ranks_;
  // Without a cache, the stages this phase keeps frozen run as an inference
  // graph, the same one a cache would have been computed with.
  prefix_.reset();
  prefix_stages_ = 0;
  const int n = static_cast<int>(backbone_.stages.size());
  if (!data_.precomputed()) {
    if (freeze_depth_ < 0 || freeze_depth_ >= n) {
      prefix_stages_ = -1;
    } else if (stages_.has_value() && freeze_depth_ > 0) {
      prefix_stages_ = freeze_depth_;
    }
    if (prefix_stages_ != 0) {
      std::string unoptimised;
      auto prefix = BuildFrozenPrefix(model_, prefix_stages_, recipe_.spec().image_size(), &unoptimised);
      if (!unoptimised.empty()) {
        report_.Info(absl::StrCat("the frozen stages run frozen but not optimised for inference: ", unoptimised));
      }
      if (prefix.ok()) {
        prefix_ = *std::move(prefix);
      } else {
        report_.Log("warning", absl::StrCat("the frozen stages run as they train: ", prefix.status().message()));
        prefix_stages_ = 0;
      }
    }
  }
  return absl::OkStatus();
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

absl::StatusOr<EpochLoop::EpochStats> EpochLoop::TrainOneEpoch(int epoch, int64_t first_step, EpochStats stats) {
  const pb::JobSpec& spec = recipe_.spec();
  epoch_order_rng_ = order_rng_;
  std::vector<int64_t> order(data_.train->images.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), order_rng_);
  ApplyFreeze(model_, backbone_, freeze_depth_);
  std::unique_ptr<BatchLoader> loader;
  torch::Tensor order_tensor;
  if (data_.precomputed()) {
    order_tensor = torch::tensor(order).to(options_.device);
  } else {
    data_.train_loader.seed = static_cast<uint64_t>(spec.seed()) * kEpochSeedStride + static_cast<uint64_t>(epoch);
    // A resumed epoch starts at its step; the batches before it are not made.
    data_.train_loader.first_batch = first_step;
    loader = std::make_unique<BatchLoader>(data_.train, order, data_.train_loader);
  }
  stats.start = Clock::now();
  stats.seconds_before = stats.train_seconds;
  stats.lr = base_lr_;
  const double wait_before = stats.loader_wait_seconds;
  // The partial sums' clocks, as a checkpoint keeps them.
  auto bring_up_to_date = [&] {
    stats.train_seconds = stats.seconds_before + Seconds(stats.start);
    stats.loader_wait_seconds = wait_before + (loader ? loader->wait_seconds() : 0.0);
  };
  const double interval = report_.SavesCheckpoints() ? options_.checkpoint_interval_seconds : 0;
  auto last_report = Clock::now();
  const int64_t steps_per_point = StepsPerPoint(steps_per_epoch_, options_.max_step_points);
  auto close_window = [&] {
    if (stats.window_steps == 0) return;
    stats.step_losses.push_back(static_cast<float>(stats.window_loss / stats.window_steps));
    stats.step_lrs.push_back(static_cast<float>(stats.lr));
    stats.window_loss = 0;
    stats.window_steps = 0;
  };
  int64_t step = first_step;
  while (true) {
    // Preempted: stop at this step boundary, once its state is stored.
    if (step < steps_per_epoch_ && (options_.gang != nullptr ? agreed_preempt_ : report_.Preempted())) {
      stats.preempted = true;
      bring_up_to_date();
      if (!checkpointed_) {
        const absl::Status saved = SaveCheckpoint({epoch, step, /*epoch_end=*/false}, stats);
        if (!saved.ok()) {
          report_.Log("warning", absl::StrCat("preempted at epoch ", epoch, ", step ", step,
                                              ": its checkpoint could not be stored: ", saved.message()));
        }
      }
      return stats;
    }
    torch::Tensor x, y;
    int64_t global_n = 0;  // the images of the whole batch, all ranks' shares
    if (data_.precomputed()) {
      if (step >= steps_per_epoch_) break;
      // The last batch takes what is left: a merged tail (PlanPhases) too.
      const int64_t begin = step * spec.batch_size();
      const int64_t end = step + 1 == steps_per_epoch_ ? order_tensor.size(0) : (step + 1) * spec.batch_size();
      global_n = end - begin;
      const auto [share_begin, share_end] = SplitShare(global_n, rank_, ranks_);
      auto idx = order_tensor.slice(0, begin + share_begin, begin + share_end);
      // Widened where the cache is float16 (a no-op on float32).
      x = data_.train_features.index_select(0, idx).to(torch::kFloat);
      y = data_.train_labels.index_select(0, idx);
    } else {
      auto batch = loader->Next();
      if (!batch) break;
      global_n = batch->global_size;
      x = batch->images.to(options_.device, /*non_blocking=*/true);
      y = batch->labels.to(options_.device, /*non_blocking=*/true);
    }
    if (options_.gang != nullptr ? agreed_cancel_ : report_.Cancelled()) {
      stats.cancelled = true;
      return stats;
    }
    const auto step_start = Clock::now();
    stats.lr = recipe_.LearningRateAt((epoch - 1) + static_cast<double>(step) / steps_per_epoch_, base_lr_);
    SetLearningRate(*optimizer_, stats.lr);
    auto logits = Logits(x);
    auto loss = torch::nn::functional::cross_entropy(logits, y, loss_);
    // Gradients start undefined at every step, as after a resume: nothing
    // carries over from one step to the next but the optimiser's state.
    ClearGradients(*optimizer_);
    const int64_t n = y.size(0);
    double step_loss = 0;
    int64_t step_correct = 0;
    if (options_.gang == nullptr) {
      loss.backward();
      step_loss = loss.item<double>();
      step_correct = logits.argmax(1).eq(y).sum().item<int64_t>();
    } else {
      // This rank's share of the batch's mean loss: summed over the ranks,
      // the gradients are the whole batch's. The mean divides by the
      // batch's weight: its image count, or with class weights the sum of
      // its images' weights, which no rank knows before the all-reduce. So
      // with class weights a rank's gradients are of its weighted sum, and
      // are divided by the batch's weight once summed.
      const bool weighted = loss_.weight().defined();
      const torch::Tensor share_weight =
          weighted ? loss_.weight().index_select(0, y).sum().to(torch::kFloat)
                   : torch::full({}, static_cast<float>(n),
                                 torch::TensorOptions().dtype(torch::kFloat).device(options_.device));
      (weighted ? loss * share_weight.detach() : loss * (static_cast<double>(n) / static_cast<double>(global_n)))
          .backward();
      // With them: the step's figures and the ranks' flags.
      const bool preempt = report_.Preempted() || (rank_ > 0 && report_.Cancelled());
      const bool cancel = rank_ == 0 && report_.Cancelled();
      const auto flag = [&](bool on) {
        return torch::full({}, on ? 1.0f : 0.0f, torch::TensorOptions().dtype(torch::kFloat).device(options_.device));
      };
      auto figures = torch::stack({loss.detach().to(torch::kFloat) * share_weight,
                                   logits.argmax(1).eq(y).sum().to(torch::kFloat), flag(preempt), flag(cancel),
                                   share_weight});
      std::vector<torch::Tensor> summed;
      for (const auto& p : TrainableParameters(model_)) {
        if (p.grad().defined()) summed.push_back(p.grad());
      }
      summed.push_back(figures);
      options_.gang->AllReduceSum(summed);
      const auto f = figures.cpu();
      const double batch_weight = static_cast<double>(f[4].item<float>());
      if (weighted) {
        for (size_t i = 0; i + 1 < summed.size(); ++i) summed[i].div_(batch_weight);
      }
      step_loss = static_cast<double>(f[0].item<float>()) / batch_weight;
      step_correct = static_cast<int64_t>(std::llround(f[1].item<float>()));
      agreed_preempt_ = f[2].item<float>() > 0;
      agreed_cancel_ = f[3].item<float>() > 0;
    }
    if (spec.grad_clip_norm() > 0) {
      torch::nn::utils::clip_grad_norm_(TrainableParameters(model_), spec.grad_clip_norm());
    }
    optimizer_->step();
    checkpointed_ = false;
    ++step;
    ++steps_done_;
    FT_RETURN_IF_ERROR(divergence_.Observe(epoch, step, step_loss, stats.lr));
    stats.loss_sum += step_loss * static_cast<double>(global_n);
    stats.window_loss += step_loss;
    if (++stats.window_steps == steps_per_point) close_window();
    stats.correct += step_correct;
    stats.seen += global_n;
    report_.Step(Seconds(step_start), global_n);
    if (Seconds(last_report) >= options_.progress_interval_seconds || step == steps_per_epoch_) {
      last_report = Clock::now();
      const double elapsed = train_seconds_ + stats.seconds_before + Seconds(stats.start);
      pb::Progress p;
      p.set_phase("train");
      p.set_epoch(epoch);
      p.set_epochs(spec.epochs());
      p.set_step(step);
      p.set_steps_per_epoch(steps_per_epoch_);
      p.set_loss(static_cast<float>(stats.loss_sum / stats.seen));
      p.set_images_per_second(static_cast<float>(stats.seen / std::max(1e-9, stats.seconds_before + Seconds(stats.start))));
      p.set_eta_seconds(static_cast<float>(elapsed / steps_done_ * (total_steps_ - steps_done_)));
      report_.Progress(p);
    }
    // Mid-epoch checkpoints; the epoch's end has its own, after validation.
    if (interval > 0 && step < steps_per_epoch_ && Now() - last_checkpoint_ >= absl::Seconds(interval)) {
      bring_up_to_date();
      const absl::Status saved = SaveCheckpoint({epoch, step, /*epoch_end=*/false}, stats);
      if (!saved.ok()) {
        report_.Log("warning", absl::StrCat("the checkpoint at epoch ", epoch, ", step ", step,
                                            " could not be stored; training goes on: ", saved.message()));
      }
    }
  }
  close_window();
  bring_up_to_date();
  train_seconds_ += stats.train_seconds;
  return stats;
}

torch::Tensor EpochLoop::Logits(const torch::Tensor& x) {
  // The head on what stages `from`.. of the backbone make of `a`.
  auto rest = [&](const torch::Tensor& a, int from) {
    const int n = static_cast<int>(backbone_.stages.size());
    return head_.forward({from < 0 ? a : (*stages_)({a, from, n}).toTensor()}).toTensor();
  };
  if (data_.cached) return rest(x, -1);
  if (data_.prefix_stages > 0) return rest(x, data_.prefix_stages);
  if (!prefix_.has_value()) return model_.forward({x}).toTensor();
  torch::Tensor frozen;
  {
    torch::NoGradGuard no_grad;
    frozen = prefix_->forward({x}).toTensor();
  }
  return rest(frozen, prefix_stages_);
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
  // The head alone over cached features: too little work to share.
  if (data_.cached) return EvaluateFeatures(head_, data_.val_features, data_.val_labels, num_classes_);
  if (options_.gang == nullptr) return ValidateRange({});
  const bool activations = data_.prefix_stages > 0;
  const int64_t n = activations ? data_.val_features.size(0) : static_cast<int64_t>(data_.val->size());
  // EvaluateActivations cuts plain batches; the loader may merge a tail of one.
  const EvalRange mine = RankShareOfBatches(n, data_.eval_loader.batch_size,
                                            !activations && data_.eval_loader.merge_single_tail, rank_, ranks_);
  if (!logged_validation_share_) {
    logged_validation_share_ = true;
    util::Log("info", "finetune-worker", "validation is shared by the ranks",
              {{"rank", absl::StrCat(rank_, "/", ranks_)},
               {"images", absl::StrCat("[", mine.begin, ", ", mine.end, ") of ", n)}});
  }
  return GatherShares(ValidateRange(mine), mine, n);
}

EvalResult EpochLoop::GatherShares(const EvalResult& mine, EvalRange range, int64_t n) {
  torch::Tensor summed = PackShare(mine, range, n, num_classes_).to(options_.device);
  options_.gang->AllReduceSum({summed});
  return UnpackShares(summed, n, num_classes_);
}

EvalResult EpochLoop::ValidateRange(EvalRange range) {
  if (data_.prefix_stages > 0) {
    return EvaluateActivations(model_, data_.val_features, data_.val_labels, data_.prefix_stages,
                               static_cast<int>(backbone_.stages.size()), data_.eval_loader.batch_size, num_classes_,
                               range);
  }
  model_.eval();
  torch::NoGradGuard no_grad;
  if (prefix_stages_ < 0) {
    // Through the same frozen graph as training, as a cache would.
    return Evaluate(
        *data_.val, data_.eval_loader, options_.device, num_classes_,
        [&](const torch::Tensor& x) { return Logits(x); }, range);
  }
  // Stages that train: this epoch's weights as an inference graph of their
  // own (BatchNorm folded, oneDNN layouts), the whole backbone through it.
  // Built anew each validation, since the weights changed (bench/README.md,
  // "Full fine-tune").
  std::string unoptimised;
  auto frozen = BuildFrozenPrefix(model_, -1, recipe_.spec().image_size(), &unoptimised);
  if (!unoptimised.empty() && !warned_unoptimised_validation_) {
    warned_unoptimised_validation_ = true;
    report_.Info(absl::StrCat("validation runs frozen but not optimised for inference: ", unoptimised));
  }
  if (frozen.ok()) {
    return Evaluate(
        *data_.val, data_.eval_loader, options_.device, num_classes_,
        [&](const torch::Tensor& x) { return head_.forward({frozen->forward({x}).toTensor()}).toTensor(); }, range);
  } else if (!warned_unfrozen_validation_) {
    warned_unfrozen_validation_ = true;
    report_.Log("warning", absl::StrCat("validation runs the model as it trains: ", frozen.status().message()));
  }
  return Evaluate(model_, *data_.val, data_.eval_loader, options_.device, num_classes_, range);
}

// What a checkpoint holds, and so everything that decides the rest of the
// run (the keys are listed in README.md, "Checkpoints and resume").
std::string EpochLoop::Checkpoint(const CheckpointPosition& position, const EpochStats& stats) const {
  CheckpointWriter w(options_.fingerprint, position);
  // Every parameter and buffer, BatchNorm statistics included, by name.
  std::vector<std::string> names;
  std::vector<torch::Tensor> tensors;
  for (const auto& p : model_.named_parameters(/*recurse=*/true)) {
    names.push_back(p.name);
    tensors.push_back(p.value);
  }
  for (const auto& b : model_.named_buffers(/*recurse=*/true)) {
    names.push_back(b.name);
    tensors.push_back(b.value);
  }
  w.Text("model/names", absl::StrJoin(names, "\n"));
  w.Tensors("model/tensors", tensors);
  // The phase, and its optimiser: Adam's moments and step counts, SGD's momentum.
  w.Int("phase/finetune", finetune_ ? 1 : 0);
  torch::serialize::OutputArchive optimizer(w.archive().compilation_unit());
  optimizer_->save(optimizer);
  w.archive().write("optimizer", optimizer);
  // The random streams: dropout's (the default generators) and the order's,
  // as the current epoch began unless it is complete.
  w.Tensors("rng/cpu", {GeneratorState(at::detail::getDefaultCPUGenerator())});
  if (options_.device.is_cuda()) {
    w.Tensors("rng/cuda", {GeneratorState(at::globalContext().defaultGenerator(options_.device))});
  }
  std::ostringstream order_rng;
  order_rng << (position.epoch_end ? order_rng_ : epoch_order_rng_);
  w.Text("rng/order", order_rng.str());
  // The loop, and the epoch's partial sums (its train_loss is a mean over all of it).
  w.Int("loop/steps_done", steps_done_);
  w.Double("loop/train_seconds", train_seconds_);
  w.Double("epoch/loss_sum", stats.loss_sum);
  w.Int("epoch/correct", stats.correct);
  w.Int("epoch/seen", stats.seen);
  w.Double("epoch/train_seconds", stats.train_seconds);
  w.Double("epoch/loader_wait_seconds", stats.loader_wait_seconds);
  w.Tensors("epoch/step_curve", {torch::tensor(stats.step_losses, torch::kFloat32),
                                 torch::tensor(stats.step_lrs, torch::kFloat32)});
  w.Double("epoch/window_loss", stats.window_loss);
  w.Int("epoch/window_steps", stats.window_steps);
  const DivergenceMonitor::State divergence = divergence_.state();
  w.Double("divergence/reference", divergence.reference);
  w.Tensors("divergence/window", {torch::tensor(divergence.window, torch::kFloat64)});
  w.Double("divergence/window_sum", divergence.window_sum);
  // The best epoch behind --export best, and early stopping. Its weights are
  // the model's own at the end of the best epoch, and not needed for --export last.
  const bool best_is_model = position.epoch_end && result_.best_epoch == position.epoch;
  w.Double("best/loss", best_loss_);
  w.Int("best/epoch", result_.best_epoch);
  w.Int("best/since", since_best_);
  w.Bytes("best/summary", result_.best_summary.SerializeAsString());
  w.Int("best/is_model", best_is_model ? 1 : 0);
  w.Tensors("best/weights", best_is_model || recipe_.exports_last_epoch() ? std::vector<torch::Tensor>()
                                                                          : result_.best_weights);
  // The exported epoch's validation, for the model's per-class figures
  // without a second pass: each image's label, prediction and confidence.
  if (result_.exported_val.confusion.defined()) {
    std::vector<int64_t> labels, predicted;
    std::vector<float> confidence;
    for (const Prediction& p : result_.exported_val.predictions) {
      labels.push_back(p.label);
      predicted.push_back(p.predicted);
      confidence.push_back(p.confidence);
    }
    w.Tensors("val/exported", {result_.exported_val.confusion, torch::tensor(labels, torch::kInt64),
                               torch::tensor(predicted, torch::kInt64), torch::tensor(confidence, torch::kFloat32),
                               torch::tensor({result_.exported_val.loss, result_.exported_val.top1,
                                              result_.exported_val.top5}, torch::kFloat64)});
  }
  // What the events and metadata.json report.
  w.Bytes("history/last", result_.last_summary.SerializeAsString());
  w.Int("history/size", static_cast<int64_t>(result_.history.size()));
  for (size_t i = 0; i < result_.history.size(); ++i) {
    w.Bytes(absl::StrCat("history/", i), result_.history[i].SerializeAsString());
  }
  w.Int("metrics/trained_images", metrics_->trained_images());
  w.Int("metrics/epochs_completed", metrics_->epochs_completed());
  return w.Finish();
}

absl::Status EpochLoop::SaveCheckpoint(const CheckpointPosition& position, const EpochStats& stats) {
  if (!report_.SavesCheckpoints()) return absl::OkStatus();
  std::string bytes;
  const auto start = Clock::now();
  try {
    bytes = Checkpoint(position, stats);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("writing the checkpoint: LibTorch: ", e.what_without_backtrace()));
  }
  const double serialise_seconds = Seconds(start);
  const absl::Status saved = report_.SaveCheckpoint(position, bytes);
  // A store that fails is not asked again at every step.
  last_checkpoint_ = Now();
  if (saved.ok()) checkpointed_ = true;
  // What training waited for (bench/checkpoint_overhead.py reads it).
  util::Log("info", "finetune-worker", "checkpoint written",
            {{"epoch", absl::StrCat(position.epoch)}, {"step", absl::StrCat(position.step)},
             {"bytes", absl::StrCat(bytes.size())}, {"serialise_seconds", absl::StrFormat("%.3f", serialise_seconds)},
             {"store_seconds", absl::StrFormat("%.3f", Seconds(start) - serialise_seconds)},
             {"ok", saved.ok() ? "true" : "false"}});
  return saved;
}

absl::Status EpochLoop::Restore(std::string bytes) {
  try {
    auto reader = CheckpointReader::Open(bytes, options_.fingerprint, options_.device);
    // Its tensors are read: the bytes are no longer needed.
    std::string().swap(bytes);
    if (!reader.ok()) return reader.status();
    return RestoreFrom(**reader);
  } catch (const c10::Error& e) {
    return absl::FailedPreconditionError(
        absl::StrCat("the checkpoint does not fit this job: LibTorch: ", FirstLine(e.what_without_backtrace())));
  }
}

absl::Status EpochLoop::RestoreFrom(CheckpointReader& reader) {
  const pb::JobSpec& spec = recipe_.spec();
  const CheckpointPosition at = reader.info().position;
  if (at.epoch < 1 || at.epoch > spec.epochs() || at.step < 0) {
    return absl::FailedPreconditionError(absl::StrCat("the checkpoint is at epoch ", at.epoch, ", step ", at.step,
                                                      ", outside this job's ", spec.epochs(), " epochs"));
  }
  // The model, tensor by tensor, in named_parameters then named_buffers order.
  const std::vector<std::string> names = absl::StrSplit(reader.Text("model/names"), '\n');
  const std::vector<torch::Tensor> saved = reader.Tensors("model/tensors");
  std::vector<std::pair<std::string, torch::Tensor>> current;
  for (const auto& p : model_.named_parameters(/*recurse=*/true)) current.emplace_back(p.name, p.value);
  for (const auto& b : model_.named_buffers(/*recurse=*/true)) current.emplace_back(b.name, b.value);
  if (names.size() != current.size() || saved.size() != current.size()) {
    return absl::FailedPreconditionError(absl::StrCat("the checkpoint holds ", saved.size(), " tensors, this model ",
                                                      current.size()));
  }
  for (size_t i = 0; i < current.size(); ++i) {
    const torch::Tensor& t = saved[i];
    if (names[i] != current[i].first || t.sizes() != current[i].second.sizes() ||
        t.scalar_type() != current[i].second.scalar_type()) {
      return absl::FailedPreconditionError(absl::StrCat("the checkpoint's tensor ", i, " is ", names[i], " ",
                                                        ShapeOf(t), ", this model's ", current[i].first, " ",
                                                        ShapeOf(current[i].second)));
    }
  }
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < current.size(); ++i) current[i].second.copy_(saved[i]);
  }

  // Where the loop stands: the epoch after a complete one, or the step within one.
  Resume resume;
  resume.epoch = at.epoch_end ? at.epoch + 1 : at.epoch;
  resume.step = at.epoch_end ? 0 : at.step;
  if (!at.epoch_end) {
    resume.stats.loss_sum = reader.Double("epoch/loss_sum");
    resume.stats.correct = reader.Int("epoch/correct");
    resume.stats.seen = reader.Int("epoch/seen");
    resume.stats.train_seconds = reader.Double("epoch/train_seconds");
    resume.stats.loader_wait_seconds = reader.Double("epoch/loader_wait_seconds");
    // Checkpoints from before the per-step curve resume with the curve's
    // points of the steps after it only.
    if (reader.Has("epoch/window_steps")) {
      const std::vector<torch::Tensor> curve = reader.Tensors("epoch/step_curve");
      if (curve.size() != 2 || curve[0].numel() != curve[1].numel()) {
        return absl::FailedPreconditionError("the checkpoint's per-step curve (epoch/step_curve) is malformed");
      }
      resume.stats.step_losses = ToFloats(curve[0]);
      resume.stats.step_lrs = ToFloats(curve[1]);
      resume.stats.window_loss = reader.Double("epoch/window_loss");
      resume.stats.window_steps = reader.Int("epoch/window_steps");
    }
  }
  resume.trained_images = reader.Int("metrics/trained_images");
  resume.epochs_completed = static_cast<int>(reader.Int("metrics/epochs_completed"));
  steps_done_ = reader.Int("loop/steps_done");
  train_seconds_ = reader.Double("loop/train_seconds");
  DivergenceMonitor::State divergence;
  divergence.reference = reader.Double("divergence/reference");
  const torch::Tensor window = reader.Tensors("divergence/window").at(0).to(torch::kCPU).contiguous();
  divergence.window.assign(window.data_ptr<double>(), window.data_ptr<double>() + window.numel());
  divergence.window_sum = reader.Double("divergence/window_sum");
  divergence_.set_state(divergence);
  std::istringstream order_rng(reader.Text("rng/order"));
  order_rng >> order_rng_;
  if (order_rng.fail()) return absl::FailedPreconditionError("the checkpoint's order stream (rng/order) does not parse");
  epoch_order_rng_ = order_rng_;

  // The best epoch, early stopping, and the history.
  best_loss_ = reader.Double("best/loss");
  result_.best_epoch = static_cast<int>(reader.Int("best/epoch"));
  since_best_ = static_cast<int>(reader.Int("best/since"));
  if (!result_.best_summary.ParseFromString(reader.Bytes("best/summary")) ||
      !result_.last_summary.ParseFromString(reader.Bytes("history/last"))) {
    return absl::FailedPreconditionError("the checkpoint's epoch summaries do not parse");
  }
  const int64_t history = reader.Int("history/size");
  for (int64_t i = 0; i < history; ++i) {
    if (!result_.history.emplace_back().ParseFromString(reader.Bytes(absl::StrCat("history/", i)))) {
      return absl::FailedPreconditionError(absl::StrCat("the checkpoint's summary of epoch ", i + 1, " does not parse"));
    }
  }
  if (reader.Has("val/exported/size")) {
    const std::vector<torch::Tensor> v = reader.Tensors("val/exported");
    if (v.size() != 5 || v[1].numel() != v[2].numel() || v[1].numel() != v[3].numel() || v[4].numel() != 3) {
      return absl::FailedPreconditionError("the checkpoint's exported validation (val/exported) is malformed");
    }
    EvalResult& e = result_.exported_val;
    e.confusion = v[0].to(torch::kCPU).to(torch::kInt64);
    const torch::Tensor labels = v[1].to(torch::kCPU).contiguous(), predicted = v[2].to(torch::kCPU).contiguous();
    const torch::Tensor confidence = v[3].to(torch::kCPU).contiguous(), figures = v[4].to(torch::kCPU).contiguous();
    for (int64_t i = 0; i < labels.numel(); ++i) {
      e.predictions.push_back({labels.data_ptr<int64_t>()[i], predicted.data_ptr<int64_t>()[i],
                               confidence.data_ptr<float>()[i]});
    }
    e.loss = figures.data_ptr<double>()[0];
    e.top1 = figures.data_ptr<double>()[1];
    e.top5 = figures.data_ptr<double>()[2];
  }
  if (!recipe_.exports_last_epoch()) {
    if (reader.Int("best/is_model") != 0) {
      result_.best_weights = Snapshot(model_);
    } else {
      result_.best_weights = reader.Tensors("best/weights");
      if (!result_.best_weights.empty() && result_.best_weights.size() != current.size()) {
        return absl::FailedPreconditionError(absl::StrCat("the checkpoint's best weights hold ",
                                                          result_.best_weights.size(), " tensors, this model ",
                                                          current.size()));
      }
    }
  }

  // The phase of the next step, and its optimiser unless that phase starts afresh there.
  resume.stopped_early = at.epoch_end && StopsEarly(at.epoch);
  const bool more = resume.epoch <= spec.epochs() && !resume.stopped_early;
  if (more) {
    FT_RETURN_IF_ERROR(EnterPhase(FineTunes(resume.epoch)));
    if (resume.step >= steps_per_epoch_) {
      return absl::FailedPreconditionError(absl::StrCat("the checkpoint is at step ", resume.step, " of epoch ",
                                                        resume.epoch, ", which has ", steps_per_epoch_, " steps"));
    }
    if ((reader.Int("phase/finetune") != 0) == finetune_) {
      torch::serialize::InputArchive optimizer;
      reader.archive().read("optimizer", optimizer);
      optimizer_->load(optimizer);
    }
  }
  // The random streams last, after everything that could draw from them.
  SetGeneratorState(at::detail::getDefaultCPUGenerator(), reader.Tensors("rng/cpu").at(0));
  if (options_.device.is_cuda() && reader.Has("rng/cuda/size")) {
    SetGeneratorState(at::globalContext().defaultGenerator(options_.device), reader.Tensors("rng/cuda").at(0));
  }
  resume_ = resume;
  checkpointed_ = true;
  report_.Info(absl::StrCat("resumed from checkpoint at epoch ", at.epoch, ", step ", at.step));
  if (more) LogTrainable();
  return absl::OkStatus();
}

absl::StatusOr<EpochsResult> EpochLoop::Run(pb::JobMetrics* metrics) {
  const pb::JobSpec& spec = recipe_.spec();
  metrics_ = metrics;
  int first_epoch = 1;
  if (resume_) {
    first_epoch = resume_->epoch;
    metrics->set_trained_images(resume_->trained_images);
    metrics->set_epochs_completed(resume_->epochs_completed);
  } else {
    FT_RETURN_IF_ERROR(EnterPhase(/*finetune=*/false));
    LogTrainable();
  }
  if (options_.gang != nullptr) {
    // Every rank starts from rank 0's state, as DDP does.
    BroadcastState(/*parameters=*/true);
    // Each rank's own random stream (dropout, stochastic depth); the data
    // order and the augmentation are the job's seed's on every rank.
    if (rank_ > 0) torch::manual_seed(static_cast<uint64_t>(spec.seed()) * 1000003ULL + static_cast<uint64_t>(rank_));
  }
  last_checkpoint_ = Now();
  const bool stopped_early = resume_ && resume_->stopped_early;
  for (int epoch = first_epoch; epoch <= spec.epochs() && !stopped_early; ++epoch) {
    const bool resumed_here = resume_ && epoch == first_epoch;
    if (recipe_.StartsFineTuning(epoch) && !resumed_here) {
      // The classic second phase: unfreeze deeper stages, lower learning rate, fresh optimiser.
      FT_RETURN_IF_ERROR(EnterPhase(/*finetune=*/true));
      report_.Info(absl::StrCat("epoch ", epoch, ": fine-tuning phase"));
      LogTrainable();
    }
    FT_ASSIGN_OR_RETURN(const EpochStats stats, TrainOneEpoch(epoch, resumed_here ? resume_->step : 0,
                                                              resumed_here ? resume_->stats : EpochStats()));
    if (stats.cancelled || stats.preempted) {
      result_.cancelled = stats.cancelled;
      result_.preempted = stats.preempted;
      return std::move(result_);
    }
    // Every rank validates rank 0's model, BatchNorm statistics included.
    if (options_.gang != nullptr) BroadcastState(/*parameters=*/false);
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
    summary.set_epoch_seconds(static_cast<float>(stats.seconds_before + Seconds(stats.start)));
    summary.set_loader_wait_seconds(static_cast<float>(stats.loader_wait_seconds));
    summary.set_freeze_depth(freeze_depth_);
    summary.set_features_cached(data_.precomputed());
    summary.set_cache_stage(data_.cache_stage);
    summary.set_cache_bytes(data_.cache_bytes);
    if (data_.precomputed()) {
      summary.set_cache_dtype(data_.train_features.scalar_type() == torch::kHalf ? "float16" : "float32");
      summary.set_cache_on_disk(data_.cache_on_disk);
    }
    summary.mutable_step_losses()->Add(stats.step_losses.begin(), stats.step_losses.end());
    summary.mutable_step_learning_rates()->Add(stats.step_lrs.begin(), stats.step_lrs.end());
    summary.set_steps_per_point(static_cast<int32_t>(StepsPerPoint(steps_per_epoch_, options_.max_step_points)));
    summary.set_steps(steps_per_epoch_);
    summary.set_world_size(ranks_);
    metrics->set_trained_images(metrics->trained_images() + stats.seen);
    metrics->set_epochs_completed(epoch);
    // Never a NaN epoch, even if one got this far.
    const bool improved = std::isfinite(val.loss) && val.loss < best_loss_;
    if (improved) {
      best_loss_ = val.loss;
      result_.best_epoch = epoch;
      since_best_ = 0;
      result_.best_weights = Snapshot(model_);
      result_.best_summary = summary;
    } else {
      ++since_best_;
    }
    if (improved || recipe_.exports_last_epoch()) result_.exported_val = val;
    summary.set_best(improved);
    result_.last_summary = summary;
    result_.history.push_back(summary);
    // The epoch's checkpoint before its summary: an epoch a user saw finish
    // is never trained again.
    const absl::Status saved = SaveCheckpoint({epoch, steps_per_epoch_, /*epoch_end=*/true}, stats);
    if (!saved.ok()) {
      return absl::Status(saved.code(),
                          absl::StrCat("the checkpoint of epoch ", epoch, " could not be stored: ", saved.message()));
    }
    report_.Epoch(summary);
    if (StopsEarly(epoch)) {
      report_.Info(absl::StrCat("early stopping after epoch ", epoch, ": val loss has not improved for ", since_best_,
                                " epochs; exporting epoch ", result_.best_epoch));
      break;
    }
  }
  return std::move(result_);
}

void EpochLoop::BroadcastState(bool parameters) {
  std::vector<torch::Tensor> state;
  if (parameters) {
    for (const auto& p : model_.parameters()) state.push_back(p);
  }
  for (const auto& b : model_.buffers()) {
    // Integers too (BatchNorm's num_batches_tracked): one bucket per dtype.
    state.push_back(b);
  }
  options_.gang->Broadcast(state);
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
