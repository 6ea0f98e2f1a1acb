#include "server/jobs/spec_validation.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/spec/spec_options.h"
#include "common/util/status.h"

namespace ft::server {
namespace {

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

constexpr int kDefaultEpochs = 3;
constexpr int kMaxEpochs = 10000;
constexpr int kDefaultBatchSize = 32;
constexpr int kMaxBatchSize = 4096;
constexpr int kDefaultImageSize = 224;
constexpr int kMinImageSize = 16;
constexpr int kMaxImageSize = 1024;
constexpr float kDefaultLearningRate = 1e-3f;
constexpr float kDefaultValSplit = 0.2f;
constexpr int kDefaultCheckpointSeconds = 300;
constexpr int kMaxCheckpointSeconds = 7 * 24 * 3600;
// Ranks of one data-parallel job, at most.
constexpr int kMaxWorkers = 64;

}  // namespace

absl::Status ValidateSpec(pb::JobSpec* spec, const catalog::BackboneInfo** backbone) {
  if (spec->backbone().empty()) return Invalid("backbone", "is required");
  *backbone = catalog::FindBackbone(spec->backbone());
  if (*backbone == nullptr) {
    return Invalid("backbone", absl::StrCat("unknown backbone '", spec->backbone(),
                                            "'; known: ", catalog::BackboneNames()));
  }
  if (spec->epochs() < 0 || spec->epochs() > kMaxEpochs) {
    return Invalid("epochs", absl::StrCat("must be between 1 and ", kMaxEpochs, ", got ", spec->epochs()));
  }
  if (spec->epochs() == 0) spec->set_epochs(kDefaultEpochs);
  if (spec->batch_size() < 0 || spec->batch_size() > kMaxBatchSize) {
    return Invalid("batch_size",
                   absl::StrCat("must be between 1 and ", kMaxBatchSize, ", got ", spec->batch_size()));
  }
  if (spec->batch_size() == 0) spec->set_batch_size(kDefaultBatchSize);
  if (spec->workers() < 0 || spec->workers() > kMaxWorkers) {
    return Invalid("workers", absl::StrCat("must be between 1 and ", kMaxWorkers, ", got ", spec->workers()));
  }
  if (spec->workers() == 0) spec->set_workers(1);
  // batch_size is the global batch; each rank trains on its share, and a
  // train-mode BatchNorm needs two values per channel.
  if (spec->workers() > 1 && spec->batch_size() < 2 * spec->workers()) {
    return Invalid("batch_size", absl::StrCat("is the global batch, split between the ", spec->workers(),
                                              " workers: it must be at least ", 2 * spec->workers(),
                                              " (2 images per worker), got ", spec->batch_size()));
  }
  if (spec->sync_bn() && spec->workers() < 2) {
    return Invalid("sync_bn", "synchronises BatchNorm across workers: it needs --workers 2 or more");
  }
  if (spec->sync_bn() && catalog::IsTorchScriptBackbone(spec->backbone())) {
    // The worker swaps the forward of the BatchNorm layers it builds; a
    // TorchScript backbone's own layers it cannot.
    return Invalid("sync_bn", "works with the built-in architectures' BatchNorm, not with a TorchScript backbone's "
                              "own layers");
  }
  if (spec->image_size() == 0) spec->set_image_size(kDefaultImageSize);
  if (spec->image_size() < kMinImageSize || spec->image_size() > kMaxImageSize) {
    return Invalid("image_size", absl::StrCat("must be between ", kMinImageSize, " and ",
                                              kMaxImageSize, ", got ", spec->image_size()));
  }
  if (!std::isfinite(spec->learning_rate()) || spec->learning_rate() < 0 ||
      spec->learning_rate() > 10) {
    return Invalid("learning_rate",
                   absl::StrCat("must be a positive number up to 10, got ", spec->learning_rate()));
  }
  if (spec->learning_rate() == 0) spec->set_learning_rate(kDefaultLearningRate);
  // The string options, parsed once; their defaults are written back.
  FT_ASSIGN_OR_RETURN(const spec::SpecOptions options, spec::ParseSpecOptions(*spec));
  spec::StoreSpecOptions(options, spec);
  const bool sgd = options.optimizer == spec::Optimizer::kSgd;
  const bool no_augment = options.augment == spec::Augment::kNone;
  const int stages = static_cast<int>((*backbone)->stages.size());
  if (catalog::IsTorchScriptBackbone(spec->backbone())) {
    // Its stages are the file's top-level children; the worker checks the depth.
    if (spec->freeze_depth() < -1) {
      return Invalid("freeze_depth", absl::StrCat("must be -1 (all) or >= 0, got ", spec->freeze_depth()));
    }
  } else if (spec->freeze_depth() < -1 || spec->freeze_depth() > stages) {
    return Invalid("freeze_depth",
                   absl::StrCat("must be -1 (all) or between 0 and ", stages, " (", spec->backbone(),
                                " stages: ", absl::StrJoin((*backbone)->stages, ", "), "), got ",
                                spec->freeze_depth()));
  }
  if (!std::isfinite(spec->val_split()) || spec->val_split() < 0 || spec->val_split() >= 1) {
    return Invalid("val_split", absl::StrCat("must be in [0, 1), got ", spec->val_split()));
  }
  if (spec->val_split() == 0) spec->set_val_split(kDefaultValSplit);
  if (spec->seed() < 0) return Invalid("seed", "must be non-negative");
  auto in_range = [](float v, float lo, float hi) { return std::isfinite(v) && v >= lo && v <= hi; };
  if (!in_range(spec->color_jitter(), 0, 1)) {
    return Invalid("color_jitter", absl::StrCat("must be in [0, 1], got ", spec->color_jitter()));
  }
  if (!in_range(spec->rotation_degrees(), 0, 180)) {
    return Invalid("rotation_degrees", absl::StrCat("must be in [0, 180], got ", spec->rotation_degrees()));
  }
  if ((spec->color_jitter() > 0 || spec->rotation_degrees() > 0) && no_augment) {
    return Invalid(spec->color_jitter() > 0 ? "color_jitter" : "rotation_degrees",
                   "needs --augment standard or light (augment none trains on the eval transform)");
  }
  if (spec->mean_size() != spec->std_size() || (spec->mean_size() != 0 && spec->mean_size() != 3)) {
    return Invalid(spec->mean_size() != 3 ? "mean" : "std",
                   absl::StrCat("mean and std need 3 values each (R, G, B), got ", spec->mean_size(), " and ",
                                spec->std_size()));
  }
  for (int c = 0; c < spec->mean_size(); ++c) {
    if (!in_range(spec->mean(c), -10, 10)) {
      return Invalid("mean", absl::StrCat("values must be in [-10, 10], got ", spec->mean(c)));
    }
    if (!in_range(spec->std(c), 1e-6f, 100)) {
      return Invalid("std", absl::StrCat("values must be positive (and at most 100), got ", spec->std(c)));
    }
  }
  if (!in_range(spec->weight_decay(), 0, 1)) {
    return Invalid("weight_decay", absl::StrCat("must be in [0, 1], got ", spec->weight_decay()));
  }
  if (!in_range(spec->label_smoothing(), 0, 0.99f)) {
    return Invalid("label_smoothing", absl::StrCat("must be in [0, 0.99], got ", spec->label_smoothing()));
  }
  if (!in_range(spec->grad_clip_norm(), 0, 1e6f)) {
    return Invalid("grad_clip_norm", absl::StrCat("must be >= 0, got ", spec->grad_clip_norm()));
  }
  if (spec->warmup_epochs() < 0 || spec->warmup_epochs() > spec->epochs()) {
    return Invalid("warmup_epochs", absl::StrCat("must be in [0, epochs], got ", spec->warmup_epochs()));
  }
  if (spec->lr_step_epochs() < 0) return Invalid("lr_step_epochs", "must be >= 0");
  if (spec->lr_step_epochs() == 0) spec->set_lr_step_epochs(std::max(1, spec->epochs() / 3));
  if (spec->lr_gamma() == 0) spec->set_lr_gamma(0.1f);
  if (!in_range(spec->lr_gamma(), 1e-6f, 1)) return Invalid("lr_gamma", "must be in (0, 1]");
  if (spec->momentum() == 0 && sgd) spec->set_momentum(0.9f);
  if (!in_range(spec->momentum(), 0, 0.9999f)) return Invalid("momentum", "must be in [0, 1)");
  if (spec->nesterov() && (!sgd || spec->momentum() <= 0)) {
    return Invalid("nesterov", "needs --optimizer sgd with momentum > 0");
  }
  if (spec->unfreeze_at() < 0 || spec->unfreeze_at() > spec->epochs()) {
    return Invalid("unfreeze_at", absl::StrCat("must be an epoch in [1, epochs] or 0 (off), got ", spec->unfreeze_at()));
  }
  if (spec->unfreeze_at() > 0) {
    if (spec->finetune_lr_mult() == 0) spec->set_finetune_lr_mult(0.1f);
    if (!in_range(spec->finetune_lr_mult(), 1e-6f, 100)) return Invalid("finetune_lr_mult", "must be in (0, 100]");
    if (spec->finetune_freeze_depth() < -1 ||
        (!catalog::IsTorchScriptBackbone(spec->backbone()) && spec->finetune_freeze_depth() > stages)) {
      return Invalid("finetune_freeze_depth", absl::StrCat("must be -1 (all) or between 0 and ", stages));
    }
  }
  if (spec->early_stopping_patience() < 0) return Invalid("early_stopping_patience", "must be >= 0");
  if (options.cache_features == spec::CacheFeatures::kOn &&
      (spec->freeze_depth() == 0 || !no_augment || spec->unfreeze_at() > 0)) {
    return Invalid("cache_features",
                   "on needs frozen stages (--freeze-depth K or all), --augment none and no --unfreeze-at");
  }
  if (!spec->has_checkpoint_interval_seconds()) spec->set_checkpoint_interval_seconds(kDefaultCheckpointSeconds);
  if (spec->checkpoint_interval_seconds() < 0 || spec->checkpoint_interval_seconds() > kMaxCheckpointSeconds) {
    return Invalid("checkpoint_interval_seconds",
                   absl::StrCat("must be between 0 (epoch ends only) and ", kMaxCheckpointSeconds, ", got ",
                                spec->checkpoint_interval_seconds()));
  }
  if (spec->name().size() > 256) return Invalid("name", "is longer than 256 characters");
  if (spec->weights_uri().empty()) spec->set_weights_uri("none");
  return absl::OkStatus();
}

}  // namespace ft::server
