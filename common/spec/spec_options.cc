#include "common/spec/spec_options.h"

#include <array>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ft::spec {
namespace {

template <typename E, size_t N>
using Table = std::array<std::pair<E, absl::string_view>, N>;

// One table per option; the first entry is the default. "known" lists are
// in the order the README gives them.
constexpr Table<Optimizer, 3> kOptimizers = {{{Optimizer::kAdam, "adam"},
                                              {Optimizer::kAdamW, "adamw"},
                                              {Optimizer::kSgd, "sgd"}}};
constexpr Table<LrSchedule, 3> kSchedules = {{{LrSchedule::kConstant, "constant"},
                                              {LrSchedule::kStep, "step"},
                                              {LrSchedule::kCosine, "cosine"}}};
constexpr Table<Augment, 3> kAugments = {{{Augment::kStandard, "standard"},
                                          {Augment::kLight, "light"},
                                          {Augment::kNone, "none"}}};
constexpr Table<ClassWeights, 2> kClassWeights = {{{ClassWeights::kNone, "none"},
                                                   {ClassWeights::kBalanced, "balanced"}}};
constexpr Table<CacheFeatures, 3> kCacheFeatures = {{{CacheFeatures::kAuto, "auto"},
                                                     {CacheFeatures::kOn, "on"},
                                                     {CacheFeatures::kOff, "off"}}};
constexpr Table<CacheDtype, 2> kCacheDtypes = {{{CacheDtype::kFloat32, "float32"}, {CacheDtype::kFloat16, "float16"}}};
constexpr Table<ExportWeights, 2> kExports = {{{ExportWeights::kBest, "best"}, {ExportWeights::kLast, "last"}}};
constexpr Table<OnBadImage, 2> kOnBadImage = {{{OnBadImage::kFail, "fail"}, {OnBadImage::kSkip, "skip"}}};

template <typename E, size_t N>
absl::string_view NameIn(const Table<E, N>& table, E v) {
  for (const auto& [value, name] : table) {
    if (value == v) return name;
  }
  return "?";
}

template <typename E, size_t N>
absl::Status ParseIn(const Table<E, N>& table, absl::string_view field, absl::string_view what,
                     const std::string& text, E* out) {
  if (text.empty()) {
    *out = table[0].first;
    return absl::OkStatus();
  }
  std::vector<std::string> known;
  for (const auto& [value, name] : table) {
    if (name == text) {
      *out = value;
      return absl::OkStatus();
    }
    known.emplace_back(name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": unknown ", what, " '", text, "'; known: ", absl::StrJoin(known, ", ")));
}

}  // namespace

absl::string_view Name(Optimizer v) { return NameIn(kOptimizers, v); }
absl::string_view Name(LrSchedule v) { return NameIn(kSchedules, v); }
absl::string_view Name(Augment v) { return NameIn(kAugments, v); }
absl::string_view Name(ClassWeights v) { return NameIn(kClassWeights, v); }
absl::string_view Name(CacheFeatures v) { return NameIn(kCacheFeatures, v); }
absl::string_view Name(CacheDtype v) { return NameIn(kCacheDtypes, v); }
absl::string_view Name(ExportWeights v) { return NameIn(kExports, v); }
absl::string_view Name(OnBadImage v) { return NameIn(kOnBadImage, v); }

absl::StatusOr<SpecOptions> ParseSpecOptions(const finetune::v1::JobSpec& spec) {
  SpecOptions o;
  absl::Status s = ParseIn(kOptimizers, "optimizer", "optimizer", spec.optimizer(), &o.optimizer);
  if (s.ok()) s = ParseIn(kAugments, "augment", "augmentation", spec.augment(), &o.augment);
  if (s.ok()) s = ParseIn(kClassWeights, "class_weights", "class weighting", spec.class_weights(), &o.class_weights);
  if (s.ok()) s = ParseIn(kSchedules, "lr_schedule", "schedule", spec.lr_schedule(), &o.lr_schedule);
  if (s.ok()) s = ParseIn(kCacheFeatures, "cache_features", "value", spec.cache_features(), &o.cache_features);
  if (s.ok()) s = ParseIn(kCacheDtypes, "cache_dtype", "value", spec.cache_dtype(), &o.cache_dtype);
  if (s.ok()) s = ParseIn(kExports, "export_weights", "value", spec.export_weights(), &o.export_weights);
  if (s.ok()) s = ParseIn(kOnBadImage, "on_bad_image", "value", spec.on_bad_image(), &o.on_bad_image);
  if (!s.ok()) return s;
  return o;
}

void StoreSpecOptions(const SpecOptions& o, finetune::v1::JobSpec* spec) {
  spec->set_optimizer(std::string(Name(o.optimizer)));
  spec->set_augment(std::string(Name(o.augment)));
  spec->set_class_weights(std::string(Name(o.class_weights)));
  spec->set_lr_schedule(std::string(Name(o.lr_schedule)));
  spec->set_cache_features(std::string(Name(o.cache_features)));
  spec->set_cache_dtype(std::string(Name(o.cache_dtype)));
  spec->set_export_weights(std::string(Name(o.export_weights)));
  spec->set_on_bad_image(std::string(Name(o.on_bad_image)));
}

}  // namespace ft::spec
