#ifndef FT_WORKER_BACKBONES_BACKBONE_H_
#define FT_WORKER_BACKBONES_BACKBONE_H_

#include <array>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/statusor.h"

namespace ft::worker {

// Input normalisation: per-channel (RGB) mean and std of [0, 1] pixels.
struct Normalization {
  std::array<float, 3> mean = {0.485f, 0.456f, 0.406f};  // ImageNet's
  std::array<float, 3> std = {0.229f, 0.224f, 0.225f};
  std::string source = "ImageNet, the default";  // for logs
};

// From 3 means and 3 stds. FAILED_PRECONDITION naming `source` unless there
// are 3 finite values each and every std is positive.
absl::StatusOr<Normalization> MakeNormalization(const std::vector<double>& mean, const std::vector<double>& std,
                                                const std::string& source);

// What a module says: its `mean` and `std` attributes (lists of 3 numbers, or
// 3-element tensors), when it has both; nullopt when it has neither.
absl::StatusOr<std::optional<Normalization>> NormalizationFromModule(const torch::jit::Module& module,
                                                                     const std::string& source);

// The reverse: gives `module` `mean` and `std` attributes (lists of 3
// floats), which the exported model carries for model:// jobs and for users.
void StoreNormalization(const Normalization& norm, torch::jit::Module& module);

// What a weights file's metadata says: "mean" and "std" values such as
// "[0.5, 0.5, 0.5]" or "0.5,0.5,0.5"; nullopt when it has neither.
absl::StatusOr<std::optional<Normalization>> NormalizationFromMetadata(
    const std::map<std::string, std::string>& metadata, const std::string& source);

// A feature extractor with torchvision's parameter names: everything of a
// torchvision classifier before its last Linear layer.
struct Backbone {
  std::string name;
  // forward(x: [N,3,H,W]) -> pooled features [N, feature_dim].
  torch::jit::Module module;
  // The stages freeze_depth counts, from the input; each lists the module's
  // children (or dotted paths into them, "features.3") that belong to it.
  std::vector<std::string> stage_names;
  std::vector<std::vector<std::string>> stages;
  int64_t feature_dim = 0;
  // State-dict prefixes of torchvision's own head (replaced, so skipped when
  // loading weights), e.g. "fc." for ResNet.
  std::vector<std::string> head_prefixes;
  // Its module has forward_stages (DefineStagedForward), so that a frozen
  // prefix of stages can run apart from the rest.
  bool staged = false;
  // The input normalisation its weights say they expect, if they say.
  std::optional<Normalization> normalization;
};

// Builds a randomly initialised backbone (initialised as torchvision does).
// INVALID_ARGUMENT for an unknown name.
absl::StatusOr<Backbone> BuildBackbone(const std::string& name);

// The name of the backbone that comes whole from a TorchScript file.
inline constexpr char kTorchScriptBackbone[] = "torchscript";

// Loads a scripted module whose forward(x) returns pooled features [N, D]
// (e.g. a torchvision model with its head replaced by Identity): the way in
// for architectures the zoo lacks. Its stages are its top-level children, in
// order. D is found by one forward pass at probe_size. FAILED_PRECONDITION
// when the file is not TorchScript or forward does not return [N, D].
absl::StatusOr<Backbone> LoadTorchScriptBackbone(const std::string& path, int probe_size);

// The exported model: a TorchScript module with `backbone` and `head`
// (a Linear) and two methods, forward(x) -> logits and features(x) ->
// pooled backbone output. `classes` is stored as an attribute too.
torch::jit::Module BuildClassifier(const torch::jit::Module& backbone, int64_t feature_dim,
                                   const std::vector<std::string>& classes);
// As above with a given head module (to keep a trained head).
torch::jit::Module BuildClassifierWithHead(const torch::jit::Module& backbone,
                                           const torch::jit::Module& head,
                                           const std::vector<std::string>& classes);

// Puts `model` (a classifier) in training mode with the first `freeze_depth`
// stages of `backbone` frozen: their parameters stop requiring grad and their
// modules (so their BatchNorm layers) stay in eval mode. -1 freezes all.
void ApplyFreeze(torch::jit::Module& model, const Backbone& backbone, int freeze_depth);

}  // namespace ft::worker

#endif  // FT_WORKER_BACKBONES_BACKBONE_H_
