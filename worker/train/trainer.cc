#include "worker/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "proto/util/proto_json.h"
#include "proto/util/status.h"
#include "server/datasets/layout.h"
#include "worker/backbones/backbone.h"
#include "worker/backbones/load_weights.h"
#include "worker/data/images.h"
#include "worker/data/loader.h"

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
                                                       std::vector<torch::Tensor> params) {
  const double lr = spec.learning_rate();
  if (spec.optimizer() == "sgd") {
    return std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(lr).momentum(0.9));
  }
  if (spec.optimizer() == "adamw") {
    return std::make_unique<torch::optim::AdamW>(params, torch::optim::AdamWOptions(lr));
  }
  return std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(lr));
}

struct EvalResult {
  double loss = 0;
  double accuracy = 0;
};

EvalResult Evaluate(torch::jit::Module& model, const ImageSet& set, const LoaderOptions& options,
                    torch::Device device) {
  model.eval();
  torch::NoGradGuard no_grad;
  std::vector<int64_t> order(set.images.size());
  std::iota(order.begin(), order.end(), 0);
  BatchLoader loader(&set, std::move(order), options);
  double loss_sum = 0;
  int64_t correct = 0, total = 0;
  while (auto batch = loader.Next()) {
    auto x = batch->images.to(device, /*non_blocking=*/true);
    auto y = batch->labels.to(device, /*non_blocking=*/true);
    auto logits = model.forward({x}).toTensor();
    loss_sum += torch::nn::functional::cross_entropy(
                    logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .item<double>();
    correct += logits.argmax(1).eq(y).sum().item<int64_t>();
    total += y.size(0);
  }
  EvalResult r;
  if (total > 0) {
    r.loss = loss_sum / total;
    r.accuracy = static_cast<double>(correct) / total;
  }
  return r;
}

absl::StatusOr<TrainResult> Train(const pb::ResolvedJob& job, const TrainerOptions& options,
                                  const TrainerHooks& hooks) {
  const pb::JobSpec& spec = job.spec();
  auto log = [&](const std::string& level, const std::string& msg) {
    if (hooks.on_log) hooks.on_log(level, msg);
  };
  auto cancelled = [&] { return hooks.cancelled && hooks.cancelled(); };
  auto progress = [&](pb::Progress p) {
    if (hooks.on_progress) hooks.on_progress(p);
  };
  pb::Progress load_progress;
  load_progress.set_phase("load");
  load_progress.set_epochs(spec.epochs());
  progress(load_progress);

  // Data: the same layout the server validated at submit.
  datasets::LayoutOptions layout_options;
  layout_options.classes.assign(job.dataset_classes().begin(), job.dataset_classes().end());
  layout_options.max_per_class = job.max_per_class();
  layout_options.max_val_per_class = job.max_val_per_class();
  layout_options.val_split = spec.val_split();
  layout_options.seed = static_cast<uint64_t>(spec.seed());
  FT_ASSIGN_OR_RETURN(datasets::DatasetLayout layout,
                      datasets::ScanDataset(job.dataset_path(), layout_options));
  DecodeOptions decode;
  decode.max_short_side = EvalResizeSize(spec.image_size());
  decode.threads = std::max(1, torch::get_num_threads());
  const auto load_start = Clock::now();
  FT_ASSIGN_OR_RETURN(ImageSet train_set, DecodeSamples(layout.train, decode));
  FT_ASSIGN_OR_RETURN(ImageSet val_set, DecodeSamples(layout.val, decode));
  log("info", absl::StrFormat("%d classes, %d train and %d val images (val: %s), decoded in %.1fs",
                              layout.classes.size(), train_set.images.size(), val_set.images.size(),
                              layout.val_source, Seconds(load_start)));
  if (cancelled()) return TrainResult{true, {}, {}, {}};

  // Model.
  torch::manual_seed(static_cast<uint64_t>(spec.seed()));
  FT_ASSIGN_OR_RETURN(Backbone backbone, BuildBackbone(spec.backbone()));
  torch::jit::Module model;
  if (!job.weights_path().empty()) {
    FT_ASSIGN_OR_RETURN(std::vector<NamedTensor> tensors, ReadWeightsFile(job.weights_path()));
    FT_RETURN_IF_ERROR(ApplyStateDict(backbone.module, tensors, backbone.head_prefixes, job.weights_path()));
    log("info", absl::StrCat("loaded ", tensors.size(), " tensors from ", job.weights_path()));
    model = BuildClassifier(backbone.module, backbone.feature_dim, layout.classes);
  } else if (!job.weights_model_id().empty()) {
    if (!hooks.fetch_model) return absl::InternalError("no way to fetch model:// weights");
    FT_ASSIGN_OR_RETURN(std::string path, hooks.fetch_model(job.weights_model_id()));
    torch::jit::Module source = torch::jit::load(path);
    if (!source.hasattr("backbone") || !source.hasattr("head") || !source.hasattr("classes")) {
      return absl::FailedPreconditionError(
          absl::StrCat("model ", job.weights_model_id(), " is not a finetuned classifier"));
    }
    backbone.module = source.attr("backbone").toModule();
    std::vector<std::string> source_classes;
    for (const auto& c : source.attr("classes").toListRef()) source_classes.push_back(c.toStringRef());
    if (source_classes == layout.classes) {
      model = BuildClassifierWithHead(backbone.module, source.attr("head").toModule(), layout.classes);
      log("info", absl::StrCat("continuing from model ", job.weights_model_id(), " with its head"));
    } else {
      model = BuildClassifier(backbone.module, backbone.feature_dim, layout.classes);
      log("info", absl::StrCat("transferring the backbone of model ", job.weights_model_id(),
                               " (", source_classes.size(), " classes) to a new ",
                               layout.classes.size(), "-class head"));
    }
  } else {
    model = BuildClassifier(backbone.module, backbone.feature_dim, layout.classes);
  }
  model.to(options.device);
  ApplyFreeze(model, backbone, spec.freeze_depth());
  std::vector<torch::Tensor> params = TrainableParameters(model);
  int64_t trainable = 0, total = 0;
  for (const auto& p : model.parameters()) {
    total += p.numel();
    if (p.requires_grad()) trainable += p.numel();
  }
  log("info", absl::StrFormat("%s: %d of %d parameters trainable (freeze_depth %d)", spec.backbone(),
                              trainable, total, spec.freeze_depth()));
  auto optimizer = MakeOptimizer(spec, params);

  LoaderOptions train_loader_options;
  train_loader_options.batch_size = spec.batch_size();
  train_loader_options.transform.image_size = spec.image_size();
  train_loader_options.transform.train = spec.augment() != "none";
  if (spec.augment() == "light") train_loader_options.transform.min_scale = 0.5f;
  train_loader_options.threads = options.loader_threads;
  train_loader_options.pin_memory = options.device.is_cuda();
  LoaderOptions eval_loader_options = train_loader_options;
  eval_loader_options.transform.train = false;

  const int64_t steps_per_epoch =
      (static_cast<int64_t>(train_set.images.size()) + spec.batch_size() - 1) / spec.batch_size();
  const int64_t total_steps = steps_per_epoch * spec.epochs();
  std::mt19937_64 order_rng(static_cast<uint64_t>(spec.seed()) ^ 0x5DEECE66DULL);
  double train_seconds = 0;
  int64_t steps_done = 0;
  TrainResult result;
  result.metrics.set_epochs_completed(0);
  nlohmann::json history = nlohmann::json::array();

  for (int epoch = 1; epoch <= spec.epochs(); ++epoch) {
    std::vector<int64_t> order(train_set.images.size());
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), order_rng);
    train_loader_options.seed = static_cast<uint64_t>(spec.seed()) * 1000003ULL + static_cast<uint64_t>(epoch);
    BatchLoader loader(&train_set, std::move(order), train_loader_options);
    ApplyFreeze(model, backbone, spec.freeze_depth());
    const auto epoch_start = Clock::now();
    auto last_report = Clock::now();
    double loss_sum = 0;
    int64_t correct = 0, seen = 0, step = 0;
    while (auto batch = loader.Next()) {
      if (cancelled()) {
        result.cancelled = true;
        return result;
      }
      const auto step_start = Clock::now();
      auto x = batch->images.to(options.device, /*non_blocking=*/true);
      auto y = batch->labels.to(options.device, /*non_blocking=*/true);
      auto logits = model.forward({x}).toTensor();
      auto loss = torch::nn::functional::cross_entropy(logits, y);
      optimizer->zero_grad();
      loss.backward();
      optimizer->step();
      ++step;
      ++steps_done;
      const int64_t n = y.size(0);
      loss_sum += loss.item<double>() * n;
      if (hooks.on_step) hooks.on_step(Seconds(step_start), n);
      correct += logits.argmax(1).eq(y).sum().item<int64_t>();
      seen += n;
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
    EvalResult val = Evaluate(model, val_set, eval_loader_options, options.device);
    pb::EpochSummary summary;
    summary.set_epoch(epoch);
    summary.set_train_loss(static_cast<float>(loss_sum / std::max<int64_t>(1, seen)));
    summary.set_train_accuracy(static_cast<float>(static_cast<double>(correct) / std::max<int64_t>(1, seen)));
    summary.set_val_loss(static_cast<float>(val.loss));
    summary.set_val_accuracy(static_cast<float>(val.accuracy));
    summary.set_learning_rate(static_cast<float>(spec.learning_rate()));
    summary.set_images_per_second(static_cast<float>(seen / std::max(1e-9, epoch_train_seconds)));
    summary.set_epoch_seconds(static_cast<float>(Seconds(epoch_start)));
    summary.set_loader_wait_seconds(static_cast<float>(loader.wait_seconds()));
    if (hooks.on_epoch) hooks.on_epoch(summary);
    history.push_back(nlohmann::json::parse(util::ToJson(summary)));
    result.metrics.set_val_accuracy(summary.val_accuracy());
    result.metrics.set_val_loss(summary.val_loss());
    result.metrics.set_train_loss(summary.train_loss());
    result.metrics.set_train_accuracy(summary.train_accuracy());
    result.metrics.set_epochs_completed(epoch);
    result.metrics.set_trained_images(result.metrics.trained_images() + seen);
  }

  model.eval();
  model.to(torch::kCPU);
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
  meta["augment"] = spec.augment();
  meta["train_images"] = train_set.images.size();
  meta["val_images"] = val_set.images.size();
  meta["spec"] = nlohmann::json::parse(util::ToJson(spec));
  meta["metrics"] = nlohmann::json::parse(util::ToJson(result.metrics));
  meta["history"] = history;
  result.metadata_json = meta.dump(2);
  return result;
}

}  // namespace

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
