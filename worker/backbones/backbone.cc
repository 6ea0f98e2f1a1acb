#include "worker/backbones/backbone.h"

#include <algorithm>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/backbones/jit_modules.h"
#include "worker/backbones/resnet.h"
// FAMILY HEADERS (keep this marker)
#include "worker/catalog/catalog.h"

namespace ft::worker {

namespace {

using Builder = Backbone (*)(const std::string& name);

// One line per architecture. Each family lives in its own file.
const std::map<std::string, Builder>& Builders() {
  static const auto* kBuilders = new std::map<std::string, Builder>{
      {"resnet18", [](const std::string& n) { return BuildResNet(n, 18); }},
      {"resnet34", [](const std::string& n) { return BuildResNet(n, 34); }},
      {"resnet50", [](const std::string& n) { return BuildResNet(n, 50); }},
      {"resnet101", [](const std::string& n) { return BuildResNet(n, 101); }},
      {"resnet152", [](const std::string& n) { return BuildResNet(n, 152); }},
      {"resnext50_32x4d", [](const std::string& n) { return BuildResNet(n, 50, 32, 4); }},
      {"wide_resnet50_2", [](const std::string& n) { return BuildResNet(n, 50, 1, 128); }},
      // FAMILY BUILDERS (one line each, keep this marker)
  };
  return *kBuilders;
}

}  // namespace

absl::StatusOr<Backbone> BuildBackbone(const std::string& name) {
  try {
    auto it = Builders().find(name);
    if (it != Builders().end()) return it->second(name);
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
