#include "worker/train/recipe.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/util/status.h"
#include "worker/train/fused_optimizers.h"

namespace ft::worker {

absl::StatusOr<Recipe> Recipe::Create(const pb::JobSpec& spec) {
  FT_ASSIGN_OR_RETURN(const spec::SpecOptions options, spec::ParseSpecOptions(spec));
  return Recipe(spec, options);
}

TrainingPhase Recipe::first_phase() const { return {spec_.freeze_depth(), spec_.learning_rate()}; }

TrainingPhase Recipe::finetune_phase() const {
  // The product is taken in float, as the spec holds both.
  const float lr = spec_.learning_rate() * spec_.finetune_lr_mult();
  return {spec_.finetune_freeze_depth(), lr};
}

bool Recipe::StartsFineTuning(int epoch) const { return spec_.unfreeze_at() > 0 && epoch == spec_.unfreeze_at(); }

bool Recipe::HasFineTuning() const { return spec_.unfreeze_at() > 0 && spec_.unfreeze_at() <= spec_.epochs(); }

int Recipe::FirstPhaseEpochs() const {
  return spec_.unfreeze_at() > 0 ? std::min(spec_.epochs(), spec_.unfreeze_at() - 1) : spec_.epochs();
}

std::unique_ptr<torch::optim::Optimizer> Recipe::MakeOptimizer(std::vector<torch::Tensor> params, double lr) const {
  const double wd = spec_.weight_decay();
  switch (options_.optimizer) {
    case spec::Optimizer::kSgd:
      return std::make_unique<FusedSGD>(
          params,
          torch::optim::SGDOptions(lr).momentum(spec_.momentum()).nesterov(spec_.nesterov()).weight_decay(wd));
    case spec::Optimizer::kAdamW:
      return std::make_unique<FusedAdamW>(params, torch::optim::AdamWOptions(lr).weight_decay(wd));
    case spec::Optimizer::kAdam:
      break;
  }
  return std::make_unique<FusedAdam>(params, torch::optim::AdamOptions(lr).weight_decay(wd));
}

double Recipe::LearningRateAt(double t, double base) const {
  const double warmup = spec_.warmup_epochs();
  if (warmup > 0 && t < warmup) return base * std::max(t, 1e-3) / warmup;
  switch (options_.lr_schedule) {
    case spec::LrSchedule::kStep: {
      const int steps = static_cast<int>(std::floor(t / std::max(1, spec_.lr_step_epochs())));
      return base * std::pow(spec_.lr_gamma(), steps);
    }
    case spec::LrSchedule::kCosine: {
      const double span = std::max(1e-9, spec_.epochs() - warmup);
      const double p = std::clamp((t - warmup) / span, 0.0, 1.0);
      return base * 0.5 * (1.0 + std::cos(M_PI * p));
    }
    case spec::LrSchedule::kConstant:
      break;
  }
  return base;
}

absl::StatusOr<Normalization> Recipe::ChooseNormalization(const std::optional<Normalization>& from_weights,
                                                          const Reporter& report) const {
  Normalization norm = from_weights.value_or(Normalization());
  if (spec_.mean_size() > 0) {
    FT_ASSIGN_OR_RETURN(norm, MakeNormalization(std::vector<double>(spec_.mean().begin(), spec_.mean().end()),
                                                std::vector<double>(spec_.std().begin(), spec_.std().end()),
                                                "the job's mean and std"));
  }
  report.Info(absl::StrFormat("input normalisation: mean [%.4g, %.4g, %.4g], std [%.4g, %.4g, %.4g] (from %s)",
                              norm.mean[0], norm.mean[1], norm.mean[2], norm.std[0], norm.std[1], norm.std[2],
                              norm.source));
  return norm;
}

TransformOptions Recipe::TrainTransform(const Normalization& norm) const {
  TransformOptions t;
  t.image_size = spec_.image_size();
  t.train = options_.augment != spec::Augment::kNone;
  if (options_.augment == spec::Augment::kLight) t.min_scale = 0.5f;
  t.color_jitter = spec_.color_jitter();
  t.rotation_degrees = spec_.rotation_degrees();
  t.mean = norm.mean;
  t.std = norm.std;
  return t;
}

torch::nn::functional::CrossEntropyFuncOptions Recipe::LossOptions(const std::vector<int64_t>& train_labels,
                                                                   int64_t num_classes, torch::Device device,
                                                                   const Reporter& report) const {
  auto loss = torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(spec_.label_smoothing());
  if (options_.class_weights == spec::ClassWeights::kBalanced) {
    auto counts = torch::bincount(torch::tensor(train_labels), {}, num_classes).to(torch::kFloat32);
    auto weights = counts.sum() / (num_classes * counts.clamp_min(1));
    loss.weight(weights.to(device));
    report.Info(absl::StrCat("balanced class weights, from ", counts.min().item<float>(), " to ",
                             counts.max().item<float>(), " images per class"));
  }
  return loss;
}

bool Recipe::MayCache() const {
  return options_.cache_features != spec::CacheFeatures::kOff && options_.augment == spec::Augment::kNone &&
         spec_.unfreeze_at() == 0;
}

int Recipe::CachedPrefixStages(int backbone_stages, bool staged) const {
  const int depth = spec_.freeze_depth();
  return MayCache() && staged && depth > 0 && depth < backbone_stages ? depth : 0;
}

bool Recipe::CachesFeatures(int backbone_stages) const {
  const int depth = spec_.freeze_depth();
  return MayCache() && (depth < 0 || depth >= backbone_stages);
}

}  // namespace ft::worker
