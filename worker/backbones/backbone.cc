#include "worker/backbones/backbone.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/backbones/jit_modules.h"
#include "worker/backbones/resnet.h"
#include "worker/catalog/catalog.h"

namespace ft::worker {

absl::StatusOr<Backbone> BuildBackbone(const std::string& name) {
  try {
    if (name == "resnet18") return BuildResNet(name, 18);
    if (name == "resnet34") return BuildResNet(name, 34);
    if (name == "resnet50") return BuildResNet(name, 50);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("cannot build ", name, ": ", e.what()));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("backbone: unknown backbone '", name, "'; known: ", catalog::BackboneNames()));
}

torch::jit::Module BuildClassifierWithHead(const torch::jit::Module& backbone,
                                           const torch::jit::Module& head,
                                           const std::vector<std::string>& classes) {
  torch::jit::Module m = NewModule("FineTunedClassifier");
  m.register_module("backbone", backbone);
  m.register_module("head", head);
  c10::List<std::string> names;
  for (const auto& c : classes) names.push_back(c);
  m.register_attribute("classes", c10::ListType::ofStrings(), names);
  m.define(R"(
def features(self, x):
    return self.backbone.forward(x)
def forward(self, x):
    return self.head.forward(self.backbone.forward(x))
)");
  return m;
}

torch::jit::Module BuildClassifier(const torch::jit::Module& backbone, int64_t feature_dim,
                                   const std::vector<std::string>& classes) {
  return BuildClassifierWithHead(backbone, Linear(feature_dim, static_cast<int64_t>(classes.size())),
                                 classes);
}

void ApplyFreeze(torch::jit::Module& model, const Backbone& backbone, int freeze_depth) {
  const int n = static_cast<int>(backbone.stages.size());
  const int depth = freeze_depth < 0 ? n : std::min(freeze_depth, n);
  model.train(true);
  torch::jit::Module bb = model.attr("backbone").toModule();
  for (const auto& p : bb.parameters()) p.requires_grad_(true);
  if (depth == n) {
    // The whole backbone: also any child not listed in a stage (e.g. a final norm).
    for (const auto& p : bb.parameters()) p.requires_grad_(false);
    bb.eval();
    return;
  }
  for (int s = 0; s < depth; ++s) {
    for (const auto& child : backbone.stages[static_cast<size_t>(s)]) {
      torch::jit::Module sub = bb.attr(child).toModule();
      for (const auto& p : sub.parameters()) p.requires_grad_(false);
      sub.eval();
    }
  }
}

}  // namespace ft::worker
