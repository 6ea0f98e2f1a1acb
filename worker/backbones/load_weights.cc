#include "worker/backbones/load_weights.h"

#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/util/status.h"
#include "worker/backbones/backbone.h"
#include "worker/backbones/densenet.h"
#include "worker/weights/safetensors.h"

namespace ft::worker {
namespace {

constexpr size_t kNamed = 5;

std::string FirstFew(const std::vector<std::string>& names) {
  std::vector<std::string> few(names.begin(), names.begin() + std::min(names.size(), kNamed));
  return absl::StrCat(absl::StrJoin(few, ", "), names.size() > kNamed ? absl::StrCat(" and ", names.size() - kNamed, " more") : "");
}

std::string ShapeString(const torch::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

}  // namespace

absl::Status ApplyStateDict(torch::jit::Module& module, const std::vector<NamedTensor>& tensors,
                            const std::vector<std::string>& skip_prefixes, const std::string& source) {
  std::map<std::string, torch::Tensor> targets;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) targets[p.name] = p.value;
  for (const auto& b : module.named_buffers(/*recurse=*/true)) targets[b.name] = b.value;

  std::vector<std::string> unexpected, wrong_shape;
  std::map<std::string, const torch::Tensor*> given;
  for (const auto& t : tensors) {
    bool skip = false;
    for (const auto& prefix : skip_prefixes) skip |= absl::StartsWith(t.name, prefix);
    if (skip) continue;
    auto it = targets.find(t.name);
    if (it == targets.end()) {
      unexpected.push_back(t.name);
    } else if (!it->second.sizes().equals(t.tensor.sizes())) {
      wrong_shape.push_back(absl::StrCat(t.name, " is ", ShapeString(t.tensor), ", expected ",
                                         ShapeString(it->second)));
    } else {
      given[t.name] = &t.tensor;
    }
  }
  std::vector<std::string> missing;
  for (const auto& [name, tensor] : targets) {
    if (!given.count(name)) {
      // Older torchvision files lack BatchNorm's counter; it does not affect results.
      if (absl::EndsWith(name, "num_batches_tracked")) continue;
      missing.push_back(name);
    }
  }
  if (!wrong_shape.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("weights ", source, " do not fit this backbone: ", FirstFew(wrong_shape)));
  }
  if (!missing.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "weights ", source, " have no tensor named ", FirstFew(missing),
        unexpected.empty() ? "" : absl::StrCat("; they hold unexpected ", FirstFew(unexpected)),
        " (weights for another architecture?)"));
  }
  if (!unexpected.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "weights ", source, " hold tensors this backbone does not have: ", FirstFew(unexpected),
        " (weights for another architecture?)"));
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, target] : targets) {
    auto it = given.find(name);
    if (it == given.end()) continue;
    target.copy_(it->second->to(target.dtype()));
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> LoadBackboneWeights(Backbone& backbone, const std::string& path, bool pretrained) {
  std::vector<NamedTensor> tensors;
  if (absl::EndsWith(path, ".safetensors")) {
    // Its __metadata__ may say how inputs are normalised.
    std::map<std::string, std::string> metadata;
    FT_ASSIGN_OR_RETURN(tensors, ReadSafetensors(path, &metadata));
    FT_ASSIGN_OR_RETURN(backbone.normalization, NormalizationFromMetadata(metadata, path));
  } else {
    FT_ASSIGN_OR_RETURN(tensors, ReadWeightsFile(path));
  }
  if (absl::StartsWith(backbone.name, "densenet")) {
    for (auto& t : tensors) t.name = RemapDensenetKey(t.name);
  }
  FT_RETURN_IF_ERROR(ApplyStateDict(backbone.module, tensors, backbone.head_prefixes, path));
  if (pretrained && backbone.module.hasattr("transform_input")) {
    backbone.module.setattr("transform_input", true);
  }
  return tensors.size();
}

absl::StatusOr<std::vector<NamedTensor>> ReadWeightsFile(const std::string& path) {
  if (absl::EndsWith(path, ".safetensors")) return ReadSafetensors(path);
  return ReadTorchCheckpoint(path);
}

}  // namespace ft::worker
