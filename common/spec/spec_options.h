// The JobSpec's string options as C++ enums, each with one name table.
// The proto keeps its strings (the public contract); they are parsed once,
// at the edge: the server's validation and the worker's recipe both go
// through ParseSpecOptions, so both read the same names the same way.
#ifndef FT_COMMON_SPEC_SPEC_OPTIONS_H_
#define FT_COMMON_SPEC_SPEC_OPTIONS_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "finetune/v1/finetune.pb.h"

namespace ft::spec {

enum class Optimizer { kAdam, kAdamW, kSgd };
enum class LrSchedule { kConstant, kStep, kCosine };
enum class Augment { kStandard, kLight, kNone };
enum class ClassWeights { kNone, kBalanced };
enum class CacheFeatures { kAuto, kOn, kOff };
enum class CacheDtype { kFloat32, kFloat16 };
enum class ExportWeights { kBest, kLast };
enum class OnBadImage { kFail, kSkip };

// The spec's name of each value ("adamw", "cosine", ...).
absl::string_view Name(Optimizer v);
absl::string_view Name(LrSchedule v);
absl::string_view Name(Augment v);
absl::string_view Name(ClassWeights v);
absl::string_view Name(CacheFeatures v);
absl::string_view Name(CacheDtype v);
absl::string_view Name(ExportWeights v);
absl::string_view Name(OnBadImage v);

// Every option of a spec, parsed. An empty string is the option's default.
struct SpecOptions {
  Optimizer optimizer = Optimizer::kAdam;
  LrSchedule lr_schedule = LrSchedule::kConstant;
  Augment augment = Augment::kStandard;
  ClassWeights class_weights = ClassWeights::kNone;
  CacheFeatures cache_features = CacheFeatures::kAuto;
  CacheDtype cache_dtype = CacheDtype::kFloat32;
  ExportWeights export_weights = ExportWeights::kBest;
  OnBadImage on_bad_image = OnBadImage::kFail;
};

// INVALID_ARGUMENT "<field>: unknown <what> '<value>'; known: a, b, c" for
// the first option that is not one of its names.
absl::StatusOr<SpecOptions> ParseSpecOptions(const finetune::v1::JobSpec& spec);

// Writes the options' names back into `spec` (the defaults made explicit,
// so that what is stored and shown is what runs).
void StoreSpecOptions(const SpecOptions& options, finetune::v1::JobSpec* spec);

}  // namespace ft::spec

#endif  // FT_COMMON_SPEC_SPEC_OPTIONS_H_
