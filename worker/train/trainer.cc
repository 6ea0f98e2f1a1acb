#include "worker/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "common/util/proto_json.h"
#include "common/util/status.h"
#include "common/datasets/layout.h"
#include "worker/backbones/backbone.h"
#include "worker/backbones/load_weights.h"
#include "worker/data/images.h"
#include "worker/data/loader.h"
#include "worker/train/guards.h"

namespace ft::worker {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

std::vector<torch::Tensor> TrainableParameters(const torch::jit::Module& model) {
  std::vector<torch::Tensor> out;
  for (const auto& p : model.parameters()) {
    if (p.requires_grad()) out.push_back(p);
  }
  return out;
}

std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(const pb::JobSpec& spec,
                                                       std::vector<torch::Tensor> params, double lr) {
  const double wd = spec.weight_decay();
  if (spec.optimizer() == "sgd") {
    return std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(lr).momentum(spec.momentum()).nesterov(spec.nesterov()).weight_decay(wd));
  }
  if (spec.optimizer() == "adamw") {
    return std::make_unique<torch::optim::AdamW>(params, torch::optim::AdamWOptions(lr).weight_decay(wd));
  }
  return std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(lr).weight_decay(wd));
}

// The learning rate at fractional epoch `t` (0-based), for a phase whose
// base rate is `base`: linear warm-up, then constant, step or cosine.
double LearningRateAt(const pb::JobSpec& spec, double t, double base) {
  const double warmup = spec.warmup_epochs();
  if (warmup > 0 && t < warmup) return base * std::max(t, 1e-3) / warmup;
  if (spec.lr_schedule() == "step") {
    const int steps = static_cast<int>(std::floor(t / std::max(1, spec.lr_step_epochs())));
    return base * std::pow(spec.lr_gamma(), steps);
  }
  if (spec.lr_schedule() == "cosine") {
    const double span = std::max(1e-9, spec.epochs() - warmup);
    const double p = std::clamp((t - warmup) / span, 0.0, 1.0);
    return base * 0.5 * (1.0 + std::cos(M_PI * p));
  }
  return base;
}

void SetLearningRate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

struct EvalResult {
  double loss = 0;
  double top1 = 0;
  double top5 = 0;
  torch::Tensor confusion;  // int64 [C, C]: true x predicted
};

// Accumulates loss, top-1, top-5 and the confusion matrix over batches.
class Evaluator {
 public:
  explicit Evaluator(int64_t classes) : confusion_(torch::zeros({classes, classes}, torch::kInt64)) {}
  void Add(const torch::Tensor& logits, const torch::Tensor& labels) {
    auto l = logits.to(torch::kCPU).to(torch::kFloat32);
    auto y = labels.to(torch::kCPU);
    loss_ += torch::nn::functional::cross_entropy(
                 l, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                 .item<double>();
    const int64_t k = std::min<int64_t>(5, l.size(1));
    auto topk = std::get<1>(l.topk(k, 1));
    auto pred = topk.select(1, 0);
    top1_ += pred.eq(y).sum().item<int64_t>();
    top5_ += topk.eq(y.unsqueeze(1)).any(1).sum().item<int64_t>();
    n_ += y.size(0);
    confusion_.index_put_({y, pred}, torch::ones_like(y), /*accumulate=*/true);
  }
  EvalResult Result() const {
    EvalResult r;
    if (n_ > 0) {
      r.loss = loss_ / n_;
      r.top1 = static_cast<double>(top1_) / n_;
      r.top5 = static_cast<double>(top5_) / n_;
    }
    r.confusion = confusion_;
    return r;
  }

 private:
  torch::Tensor confusion_;
  double loss_ = 0;
  int64_t top1_ = 0, top5_ = 0, n_ = 0;
};

EvalResult Evaluate(torch::jit::Module& model, const ImageSet& set, const LoaderOptions& options,
                    torch::Device device, int64_t classes) {
  model.eval();
  torch::NoGradGuard no_grad;
  std::vector<int64_t> order(set.images.size());
  std::iota(order.begin(), order.end(), 0);
  BatchLoader loader(&set, std::move(order), options);
  Evaluator eval(classes);
  while (auto batch = loader.Next()) {
    auto x = batch->images.to(device, /*non_blocking=*/true);
    eval.Add(model.forward({x}).toTensor(), batch->labels);
  }
  return eval.Result();
}

// Pooled backbone features of a whole set, computed once (eval mode).
torch::Tensor ComputeFeatures(torch::jit::Module& model, const ImageSet& set, const LoaderOptions& options,
                              torch::Device device) {
  model.eval();
  torch::NoGradGuard no_grad;
  std::vector<int64_t> order(set.images.size());
  std::iota(order.begin(), order.end(), 0);
  BatchLoader loader(&set, std::move(order), options);
  std::vector<torch::Tensor> parts;
  auto features = model.get_method("features");
  while (auto batch = loader.Next()) {
    parts.push_back(features({batch->images.to(device, /*non_blocking=*/true)}).toTensor());
  }
  return torch::cat(parts);
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

void FillClassMetrics(const EvalResult& r, const std::vector<std::string>& classes, pb::JobMetrics* m) {
  auto conf = r.confusion;
  const int64_t c = conf.size(0);
  auto acc = conf.accessor<int64_t, 2>();
  for (int64_t i = 0; i < c; ++i) {
    int64_t tp = acc[i][i], predicted = 0, actual = 0;
    for (int64_t j = 0; j < c; ++j) {
      predicted += acc[j][i];
      actual += acc[i][j];
    }
    auto* cm = m->add_test_per_class();
    cm->set_name(classes[static_cast<size_t>(i)]);
    const double precision = predicted > 0 ? static_cast<double>(tp) / predicted : 0;
    const double recall = actual > 0 ? static_cast<double>(tp) / actual : 0;
    cm->set_precision(static_cast<float>(precision));
    cm->set_recall(static_cast<float>(recall));
    cm->set_f1(static_cast<float>(precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0));
    cm->set_support(actual);
    for (int64_t j = 0; j < c; ++j) m->add_test_confusion(acc[i][j]);
  }
}

// The model the job starts from: backbone (built, loaded from a file, a
// TorchScript file or a stored model) plus a head for `classes`.
absl::Status PrepareModel(const pb::ResolvedJob& job, const std::vector<std::string>& classes,
                          const TrainerHooks& hooks, const std::function<void(const std::string&)>& info,
                          Backbone* backbone, torch::jit::Module* model) {
  const pb::JobSpec& spec = job.spec();
  if (spec.backbone() == kTorchScriptBackbone && job.weights_model_id().empty()) {
    FT_ASSIGN_OR_RETURN(*backbone, LoadTorchScriptBackbone(job.weights_path(), spec.image_size()));
    info(absl::StrCat("TorchScript backbone from ", job.weights_path(), ": ", backbone->feature_dim,
                      "-d features, stages ", absl::StrJoin(backbone->stage_names, ", ")));
    *model = BuildClassifier(backbone->module, backbone->feature_dim, classes);
  } else if (!job.weights_path().empty()) {
    FT_ASSIGN_OR_RETURN(*backbone, BuildBackbone(spec.backbone()));
    FT_ASSIGN_OR_RETURN(size_t count,
                        LoadBackboneWeights(*backbone, job.weights_path(), spec.weights_uri() == "pretrained"));
    info(absl::StrCat("loaded ", count, " tensors from ", job.weights_path()));
    *model = BuildClassifier(backbone->module, backbone->feature_dim, classes);
  } else if (!job.weights_model_id().empty()) {
    if (spec.backbone() != kTorchScriptBackbone) {
      FT_ASSIGN_OR_RETURN(*backbone, BuildBackbone(spec.backbone()));
    }
    if (!hooks.fetch_model) return absl::InternalError("no way to fetch model:// weights");
    FT_ASSIGN_OR_RETURN(std::string path, hooks.fetch_model(job.weights_model_id()));
    torch::jit::Module source = torch::jit::load(path);
    if (!source.hasattr("backbone") || !source.hasattr("head") || !source.hasattr("classes")) {
      return absl::FailedPreconditionError(
          absl::StrCat("model ", job.weights_model_id(), " is not a finetuned classifier"));
    }
    backbone->module = source.attr("backbone").toModule();
    FT_ASSIGN_OR_RETURN(backbone->normalization,
                        NormalizationFromModule(source, absl::StrCat("model ", job.weights_model_id())));
    if (spec.backbone() == kTorchScriptBackbone) {
      backbone->name = kTorchScriptBackbone;
      backbone->feature_dim = source.attr("head").toModule().attr("weight").toTensor().size(1);
      for (const auto& child : backbone->module.named_children()) {
        backbone->stage_names.push_back(child.name);
        backbone->stages.push_back({child.name});
      }
    }
    std::vector<std::string> source_classes;
    for (const auto& c : source.attr("classes").toListRef()) source_classes.push_back(c.toStringRef());
    if (source_classes == classes) {
      *model = BuildClassifierWithHead(backbone->module, source.attr("head").toModule(), classes);
      info(absl::StrCat("continuing from model ", job.weights_model_id(), " with its head"));
    } else {
      *model = BuildClassifier(backbone->module, backbone->feature_dim, classes);
      info(absl::StrCat("transferring the backbone of model ", job.weights_model_id(), " (",
                        source_classes.size(), " classes) to a new ", classes.size(), "-class head"));
    }
  } else {
    FT_ASSIGN_OR_RETURN(*backbone, BuildBackbone(spec.backbone()));
    *model = BuildClassifier(backbone->module, backbone->feature_dim, classes);
  }
  const int stages = static_cast<int>(backbone->stages.size());
  for (int depth : {spec.freeze_depth(), spec.unfreeze_at() > 0 ? spec.finetune_freeze_depth() : 0}) {
    if (depth > stages) {
      return absl::InvalidArgumentError(absl::StrCat(
          "freeze depth ", depth, " is deeper than ",
          spec.backbone() == kTorchScriptBackbone ? "the TorchScript backbone's " : spec.backbone() + "'s ", stages,
          spec.backbone() == kTorchScriptBackbone ? " top-level children (" : " stages (",
          absl::StrJoin(backbone->stage_names, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TrainResult> Train(const pb::ResolvedJob& job, const TrainerOptions& options,
                                  const TrainerHooks& hooks) {
  const pb::JobSpec& spec = job.spec();
  auto log = [&](const std::string& level, const std::string& msg) {
    if (hooks.on_log) hooks.on_log(level, msg);
  };
  auto info = [&](const std::string& msg) { log("info", msg); };
  auto cancelled = [&] { return hooks.cancelled && hooks.cancelled(); };
  auto progress = [&](const pb::Progress& p) {
    if (hooks.on_progress) hooks.on_progress(p);
  };
  pb::Progress load_progress;
  load_progress.set_phase("load");
  load_progress.set_epochs(spec.epochs());
  progress(load_progress);

  // Data: the same layout the server validated at submit.
  FT_ASSIGN_OR_RETURN(datasets::DatasetLayout layout, ScanJobDataset(job));
  DecodeOptions decode;
  decode.max_short_side = EvalResizeSize(spec.image_size());
  decode.threads = std::max(1, torch::get_num_threads());
  decode.skip_bad = spec.on_bad_image() == "skip";
  decode.cache_budget_bytes = options.decode_cache_bytes;
  const auto load_start = Clock::now();
  // One budget for all the job's images: what a set keeps is spent.
  auto spend = [&decode](const ImageSet& set) {
    if (decode.cache_budget_bytes >= 0) {
      decode.cache_budget_bytes = std::max<int64_t>(0, decode.cache_budget_bytes - set.cached_bytes);
    }
  };
  FT_ASSIGN_OR_RETURN(ImageSet train_set, DecodeSamples(layout.train, decode));
  spend(train_set);
  FT_ASSIGN_OR_RETURN(ImageSet val_set, DecodeSamples(layout.val, decode));
  spend(val_set);
  const int64_t num_classes = static_cast<int64_t>(layout.classes.size());
  TrainResult result;
  for (const ImageSet* set : {&train_set, &val_set}) {
    if (set->skipped.empty()) continue;
    std::vector<std::string> few(set->skipped.begin(), set->skipped.begin() + std::min<size_t>(5, set->skipped.size()));
    log("warning", absl::StrCat("skipped ", set->skipped.size(), " undecodable ",
                                set == &train_set ? "training" : "validation", " images: ", absl::StrJoin(few, ", "),
                                set->skipped.size() > few.size() ? ", ..." : ""));
    result.metrics.set_skipped_images(result.metrics.skipped_images() + static_cast<int64_t>(set->skipped.size()));
  }
  if (train_set.images.empty() || val_set.images.empty()) {
    return absl::FailedPreconditionError("no decodable training or validation images are left");
  }
  info(absl::StrFormat("%d classes, %d train and %d val images (val: %s), decoded in %.1fs", num_classes,
                       train_set.images.size(), val_set.images.size(), layout.val_source, Seconds(load_start)));
  if (train_set.uncached + val_set.uncached > 0) {
    info(absl::StrFormat(
        "decode cache full (%.0f MiB kept): %d of %d images are decoded again every epoch (worker --decode-cache-mb)",
        (train_set.cached_bytes + val_set.cached_bytes) / 1048576.0, train_set.uncached + val_set.uncached,
        train_set.size() + val_set.size()));
  }
  if (cancelled()) return TrainResult{true, {}, {}, {}};

  // Model.
  torch::manual_seed(static_cast<uint64_t>(spec.seed()));
  Backbone backbone;
  torch::jit::Module model;
  FT_RETURN_IF_ERROR(PrepareModel(job, layout.classes, hooks, info, &backbone, &model));
  if (auto bad = FirstNonFiniteTensor(model)) {
    return absl::FailedPreconditionError(
        absl::StrCat("the starting weights (", spec.weights_uri().empty() ? "none" : spec.weights_uri(),
                     ") are broken: ", *bad));
  }
  model.to(options.device);
  torch::jit::Module head = model.attr("head").toModule();

  LoaderOptions train_loader_options;
  train_loader_options.batch_size = spec.batch_size();
  train_loader_options.transform.image_size = spec.image_size();
  train_loader_options.transform.train = spec.augment() != "none";
  if (spec.augment() == "light") train_loader_options.transform.min_scale = 0.5f;
  train_loader_options.transform.color_jitter = spec.color_jitter();
  train_loader_options.transform.rotation_degrees = spec.rotation_degrees();
  // Normalisation: the job's, else what the weights say, else ImageNet's.
  Normalization norm = backbone.normalization.value_or(Normalization());
  if (spec.mean_size() > 0) {
    FT_ASSIGN_OR_RETURN(norm, MakeNormalization(std::vector<double>(spec.mean().begin(), spec.mean().end()),
                                                std::vector<double>(spec.std().begin(), spec.std().end()),
                                                "the job's mean and std"));
  }
  train_loader_options.transform.mean = norm.mean;
  train_loader_options.transform.std = norm.std;
  info(absl::StrFormat("input normalisation: mean [%.4g, %.4g, %.4g], std [%.4g, %.4g, %.4g] (from %s)", norm.mean[0],
                       norm.mean[1], norm.mean[2], norm.std[0], norm.std[1], norm.std[2], norm.source));
  // The model carries it too, for model:// jobs and for users.
  for (const auto& [name, values] : {std::pair<const char*, std::array<float, 3>>{"mean", norm.mean},
                                     std::pair<const char*, std::array<float, 3>>{"std", norm.std}}) {
    model.register_attribute(name, c10::ListType::ofFloats(),
                             c10::List<double>(std::vector<double>(values.begin(), values.end())));
  }
  train_loader_options.threads = options.loader_threads;
  train_loader_options.pin_memory = options.device.is_cuda();
  LoaderOptions eval_loader_options = train_loader_options;
  eval_loader_options.transform.train = false;

  // Loss: optional balanced class weights and label smoothing.
  auto loss_options = torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(spec.label_smoothing());
  if (spec.class_weights() == "balanced") {
    auto counts = torch::bincount(torch::tensor(train_set.labels), {}, num_classes).to(torch::kFloat32);
    auto weights = counts.sum() / (num_classes * counts.clamp_min(1));
    loss_options.weight(weights.to(options.device));
    info(absl::StrCat("balanced class weights, from ", counts.min().item<float>(), " to ",
                      counts.max().item<float>(), " images per class"));
  }

  const int all_stages = static_cast<int>(backbone.stages.size());
  auto frozen_all = [&](int depth) { return depth < 0 || depth >= all_stages; };
  const bool use_cache = spec.cache_features() != "off" && frozen_all(spec.freeze_depth()) &&
                         spec.augment() == "none" && spec.unfreeze_at() == 0;
  torch::Tensor train_features, val_features;
  if (use_cache) {
    const auto t0 = Clock::now();
    pb::Progress p;
    p.set_phase("cache");
    p.set_epochs(spec.epochs());
    progress(p);
    train_features = ComputeFeatures(model, train_set, eval_loader_options, options.device);
    val_features = ComputeFeatures(model, val_set, eval_loader_options, options.device);
    info(absl::StrFormat("backbone frozen and transform deterministic: cached %d-d features of %d images in %.1fs",
                         backbone.feature_dim, train_features.size(0) + val_features.size(0), Seconds(t0)));
  }
  torch::Tensor train_labels = torch::tensor(train_set.labels).to(options.device);
  torch::Tensor val_labels = torch::tensor(val_set.labels);

  // The batches of each phase's epochs. A last batch of one image would
  // leave a train-mode BatchNorm whose input is 1x1 with one value per
  // channel (NaN running variance), so it is then merged into the one before.
  const int64_t train_images = static_cast<int64_t>(train_set.images.size());
  auto plan_batches = [&](int depth, const char* phase) -> absl::StatusOr<BatchPlan> {
    std::string single_value_bn;
    const bool one_image_batch = spec.batch_size() == 1 || train_images % spec.batch_size() == 1;
    if (!use_cache && one_image_batch) {
      ApplyFreeze(model, backbone, depth);
      FT_ASSIGN_OR_RETURN(single_value_bn, SingleValueBatchNorm(model, spec.image_size()));
    }
    FT_ASSIGN_OR_RETURN(BatchPlan plan, PlanBatches(train_images, spec.batch_size(), single_value_bn, spec.image_size()));
    if (plan.merged_tail) {
      info(absl::StrCat("the last training batch would hold 1 image, and the train-mode BatchNorm ", single_value_bn,
                        " would see one value per channel at ", spec.image_size(), " px: ", phase,
                        " merges that image into the batch before it (", plan.num_batches, " batches an epoch, the last of ",
                        plan.last_batch_size, " images)"));
    }
    return plan;
  };
  FT_ASSIGN_OR_RETURN(const BatchPlan first_plan, plan_batches(spec.freeze_depth(), "every epoch"));
  BatchPlan finetune_plan = first_plan;
  if (spec.unfreeze_at() > 0 && spec.unfreeze_at() <= spec.epochs()) {
    FT_ASSIGN_OR_RETURN(finetune_plan, plan_batches(spec.finetune_freeze_depth(), "the fine-tuning phase"));
  }
  const int64_t first_phase_epochs = spec.unfreeze_at() > 0 ? std::min(spec.epochs(), spec.unfreeze_at() - 1) : spec.epochs();
  const int64_t total_steps = first_plan.num_batches * first_phase_epochs +
                              finetune_plan.num_batches * (spec.epochs() - first_phase_epochs);
  int64_t steps_per_epoch = first_plan.num_batches;
  DivergenceMonitor divergence(num_classes);
  std::mt19937_64 order_rng(static_cast<uint64_t>(spec.seed()) ^ 0x5DEECE66DULL);
  double train_seconds = 0;
  int64_t steps_done = 0;
  nlohmann::json history = nlohmann::json::array();
  int freeze_depth = spec.freeze_depth();
  double base_lr = spec.learning_rate();
  ApplyFreeze(model, backbone, freeze_depth);
  auto optimizer = MakeOptimizer(spec, TrainableParameters(model), base_lr);
  auto log_trainable = [&] {
    int64_t trainable = 0, total = 0;
    for (const auto& p : model.parameters()) {
      total += p.numel();
      if (p.requires_grad()) trainable += p.numel();
    }
    info(absl::StrFormat("%s: %d of %d parameters trainable (freeze_depth %d), lr %g", spec.backbone(), trainable,
                         total, freeze_depth, base_lr));
  };
  log_trainable();

  double best_loss = std::numeric_limits<double>::infinity();
  int best_epoch = 0, since_best = 0;
  std::vector<torch::Tensor> best_weights;
  pb::EpochSummary best_summary, last_summary;
  train_loader_options.merge_single_tail = first_plan.merged_tail;

  for (int epoch = 1; epoch <= spec.epochs(); ++epoch) {
    if (spec.unfreeze_at() > 0 && epoch == spec.unfreeze_at()) {
      // The classic second phase: unfreeze deeper stages, lower learning rate, fresh optimiser.
      freeze_depth = spec.finetune_freeze_depth();
      base_lr = spec.learning_rate() * spec.finetune_lr_mult();
      ApplyFreeze(model, backbone, freeze_depth);
      optimizer = MakeOptimizer(spec, TrainableParameters(model), base_lr);
      steps_per_epoch = finetune_plan.num_batches;
      train_loader_options.merge_single_tail = finetune_plan.merged_tail;
      info(absl::StrCat("epoch ", epoch, ": fine-tuning phase"));
      log_trainable();
    }
    std::vector<int64_t> order(train_set.images.size());
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), order_rng);
    ApplyFreeze(model, backbone, freeze_depth);
    std::unique_ptr<BatchLoader> loader;
    torch::Tensor order_tensor;
    if (use_cache) {
      order_tensor = torch::tensor(order).to(options.device);
    } else {
      train_loader_options.seed = static_cast<uint64_t>(spec.seed()) * 1000003ULL + static_cast<uint64_t>(epoch);
      loader = std::make_unique<BatchLoader>(&train_set, order, train_loader_options);
    }
    const auto epoch_start = Clock::now();
    auto last_report = Clock::now();
    double loss_sum = 0, lr = base_lr;
    int64_t correct = 0, seen = 0, step = 0;
    while (true) {
      torch::Tensor x, y;
      if (use_cache) {
        if (step >= steps_per_epoch) break;
        auto idx = order_tensor.slice(0, step * spec.batch_size(), (step + 1) * spec.batch_size());
        x = train_features.index_select(0, idx);
        y = train_labels.index_select(0, idx);
      } else {
        auto batch = loader->Next();
        if (!batch) break;
        x = batch->images.to(options.device, /*non_blocking=*/true);
        y = batch->labels.to(options.device, /*non_blocking=*/true);
      }
      if (cancelled()) {
        result.cancelled = true;
        return result;
      }
      const auto step_start = Clock::now();
      lr = LearningRateAt(spec, (epoch - 1) + static_cast<double>(step) / steps_per_epoch, base_lr);
      SetLearningRate(*optimizer, lr);
      auto logits = use_cache ? head.forward({x}).toTensor() : model.forward({x}).toTensor();
      auto loss = torch::nn::functional::cross_entropy(logits, y, loss_options);
      optimizer->zero_grad();
      loss.backward();
      if (spec.grad_clip_norm() > 0) {
        torch::nn::utils::clip_grad_norm_(TrainableParameters(model), spec.grad_clip_norm());
      }
      optimizer->step();
      ++step;
      ++steps_done;
      const int64_t n = y.size(0);
      const double step_loss = loss.item<double>();
      FT_RETURN_IF_ERROR(divergence.Observe(epoch, step, step_loss, lr));
      loss_sum += step_loss * n;
      correct += logits.argmax(1).eq(y).sum().item<int64_t>();
      seen += n;
      if (hooks.on_step) hooks.on_step(Seconds(step_start), n);
      if (Seconds(last_report) >= options.progress_interval_seconds || step == steps_per_epoch) {
        last_report = Clock::now();
        const double elapsed = train_seconds + Seconds(epoch_start);
        pb::Progress p;
        p.set_phase("train");
        p.set_epoch(epoch);
        p.set_epochs(spec.epochs());
        p.set_step(step);
        p.set_steps_per_epoch(steps_per_epoch);
        p.set_loss(static_cast<float>(loss_sum / seen));
        p.set_images_per_second(static_cast<float>(seen / std::max(1e-9, Seconds(epoch_start))));
        p.set_eta_seconds(static_cast<float>(elapsed / steps_done * (total_steps - steps_done)));
        progress(p);
      }
    }
    const double epoch_train_seconds = Seconds(epoch_start);
    train_seconds += epoch_train_seconds;
    pb::Progress vp;
    vp.set_phase("validate");
    vp.set_epoch(epoch);
    vp.set_epochs(spec.epochs());
    vp.set_step(steps_per_epoch);
    vp.set_steps_per_epoch(steps_per_epoch);
    vp.set_loss(static_cast<float>(loss_sum / std::max<int64_t>(1, seen)));
    progress(vp);
    EvalResult val;
    if (use_cache) {
      head.eval();
      torch::NoGradGuard no_grad;
      Evaluator e(num_classes);
      e.Add(head.forward({val_features}).toTensor(), val_labels);
      val = e.Result();
    } else {
      val = Evaluate(model, val_set, eval_loader_options, options.device, num_classes);
    }
    // Nothing non-finite survives an epoch: not a weight, not the val loss.
    if (auto bad = FirstNonFiniteTensor(model)) {
      return absl::FailedPreconditionError(absl::StrCat("training diverged at epoch ", epoch, ": ", *bad, " (",
                                                        DivergenceAdvice(lr), ")"));
    }
    if (!std::isfinite(val.loss)) {
      return absl::FailedPreconditionError(absl::StrCat("training diverged at epoch ", epoch, ": validation loss is ",
                                                        std::isnan(val.loss) ? "NaN" : "infinite", " (",
                                                        DivergenceAdvice(lr), ")"));
    }
    pb::EpochSummary summary;
    summary.set_epoch(epoch);
    summary.set_train_loss(static_cast<float>(loss_sum / std::max<int64_t>(1, seen)));
    summary.set_train_accuracy(static_cast<float>(static_cast<double>(correct) / std::max<int64_t>(1, seen)));
    summary.set_val_loss(static_cast<float>(val.loss));
    summary.set_val_accuracy(static_cast<float>(val.top1));
    summary.set_val_top5_accuracy(static_cast<float>(val.top5));
    summary.set_learning_rate(static_cast<float>(lr));
    summary.set_images_per_second(static_cast<float>(seen / std::max(1e-9, epoch_train_seconds)));
    summary.set_epoch_seconds(static_cast<float>(Seconds(epoch_start)));
    summary.set_loader_wait_seconds(static_cast<float>(loader ? loader->wait_seconds() : 0.0));
    summary.set_freeze_depth(freeze_depth);
    summary.set_features_cached(use_cache);
    result.metrics.set_trained_images(result.metrics.trained_images() + seen);
    result.metrics.set_epochs_completed(epoch);
    // Never a NaN epoch, even if one got this far.
    const bool improved = std::isfinite(val.loss) && val.loss < best_loss;
    if (improved) {
      best_loss = val.loss;
      best_epoch = epoch;
      since_best = 0;
      best_weights = Snapshot(model);
      best_summary = summary;
    } else {
      ++since_best;
    }
    summary.set_best(improved);
    last_summary = summary;
    if (hooks.on_epoch) hooks.on_epoch(summary);
    history.push_back(nlohmann::json::parse(util::ToJson(summary)));
    if (spec.early_stopping_patience() > 0 && since_best >= spec.early_stopping_patience() &&
        epoch < spec.epochs()) {
      info(absl::StrCat("early stopping after epoch ", epoch, ": val loss has not improved for ",
                        since_best, " epochs; exporting epoch ", best_epoch));
      break;
    }
  }

  // Export the best epoch's weights, unless asked for the last.
  if (spec.export_weights() == "last") {
    best_epoch = static_cast<int>(result.metrics.epochs_completed());
    best_summary = last_summary;
  } else if (!best_weights.empty()) {
    Restore(model, best_weights);
  }
  result.metrics.set_best_epoch(best_epoch);
  result.metrics.set_val_accuracy(best_summary.val_accuracy());
  result.metrics.set_val_loss(best_summary.val_loss());
  result.metrics.set_val_top5_accuracy(best_summary.val_top5_accuracy());
  result.metrics.set_train_loss(best_summary.train_loss());
  result.metrics.set_train_accuracy(best_summary.train_accuracy());

  int64_t test_images = 0;
  if (!layout.test.empty()) {
    pb::Progress p;
    p.set_phase("test");
    progress(p);
    FT_ASSIGN_OR_RETURN(ImageSet test_set, DecodeSamples(layout.test, decode));
    EvalResult test = Evaluate(model, test_set, eval_loader_options, options.device, num_classes);
    test_images = static_cast<int64_t>(test_set.images.size());
    result.metrics.set_has_test(true);
    result.metrics.set_test_accuracy(static_cast<float>(test.top1));
    result.metrics.set_test_top5_accuracy(static_cast<float>(test.top5));
    result.metrics.set_test_loss(static_cast<float>(test.loss));
    if (!std::isfinite(test.loss)) {
      return absl::FailedPreconditionError(absl::StrCat("the trained model's test loss is ",
                                                        std::isnan(test.loss) ? "NaN" : "infinite", "; it is not stored"));
    }
    FillClassMetrics(test, layout.classes, &result.metrics);
    info(absl::StrFormat("test: top-1 %.4f, top-5 %.4f on %d images", test.top1, test.top5,
                         test_set.images.size()));
  }

  model.eval();
  model.to(torch::kCPU);
  // A model with a non-finite tensor is never stored.
  if (auto bad = FirstNonFiniteTensor(model)) {
    return absl::FailedPreconditionError(absl::StrCat("the trained model is broken: ", *bad, "; it is not stored"));
  }
  result.model = model;
  const auto& t = train_loader_options.transform;
  nlohmann::json meta;
  meta["format"] = "finetuned.classifier.v1";
  meta["job_id"] = options.job_id;
  meta["backbone"] = spec.backbone();
  meta["classes"] = layout.classes;
  meta["num_classes"] = layout.classes.size();
  meta["image_size"] = spec.image_size();
  meta["resize_size"] = EvalResizeSize(spec.image_size());
  meta["mean"] = std::vector<float>(t.mean.begin(), t.mean.end());
  meta["std"] = std::vector<float>(t.std.begin(), t.std.end());
  meta["input"] = "float32 [N,3,H,W], RGB scaled to [0,1], normalised with mean/std";
  meta["eval_transform"] = "resize shorter side to resize_size, centre crop image_size";
  meta["feature_dim"] = backbone.feature_dim;
  meta["freeze_depth"] = spec.freeze_depth();
  meta["stages"] = backbone.stage_names;
  meta["dataset_uri"] = spec.dataset_uri();
  meta["weights_uri"] = spec.weights_uri();
  meta["val_source"] = layout.val_source;
  if (!layout.test_source.empty()) meta["test_source"] = layout.test_source;
  meta["augment"] = spec.augment();
  meta["train_images"] = train_set.images.size();
  meta["val_images"] = val_set.images.size();
  if (test_images > 0) meta["test_images"] = test_images;
  meta["best_epoch"] = best_epoch;
  meta["spec"] = nlohmann::json::parse(util::ToJson(spec));
  meta["metrics"] = nlohmann::json::parse(util::ToJson(result.metrics));
  meta["history"] = history;
  result.metadata_json = meta.dump(2);
  return result;
}

}  // namespace

absl::StatusOr<datasets::DatasetLayout> ScanJobDataset(const pb::ResolvedJob& job) {
  datasets::LayoutOptions options;
  options.classes.assign(job.dataset_classes().begin(), job.dataset_classes().end());
  options.max_per_class = job.max_per_class();
  options.max_val_per_class = job.max_val_per_class();
  options.val_from_split = job.val_from_split();
  options.val_split = job.spec().val_split();
  options.seed = static_cast<uint64_t>(job.spec().seed());
  return datasets::ScanDataset(job.dataset_path(), options);
}

absl::StatusOr<TrainResult> RunTraining(const pb::ResolvedJob& job, const TrainerOptions& options,
                                        const TrainerHooks& hooks) {
  // The profiling graph executor re-specialises and re-optimises the model's
  // graphs during the first epoch (10x slower steps, measured) and again when
  // stages unfreeze; plain interpretation runs the same ATen kernels.
  torch::jit::setGraphExecutorOptimize(false);
  try {
    return Train(job, options, hooks);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("LibTorch: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("training failed: ", e.what()));
  }
}

}  // namespace ft::worker
