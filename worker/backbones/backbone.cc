#include "worker/backbones/backbone.h"

#include <algorithm>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "worker/backbones/jit_modules.h"
#include "worker/backbones/resnet.h"
#include "worker/backbones/densenet.h"
#include "worker/backbones/inception.h"
#include "worker/backbones/vgg.h"
#include "worker/backbones/convnext.h"
#include "worker/backbones/efficientnet.h"
#include "worker/backbones/mobilenet.h"
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
      {"vgg11", [](const std::string& n) { return BuildVgg(n, 11, false); }},
      {"vgg11_bn", [](const std::string& n) { return BuildVgg(n, 11, true); }},
      {"vgg13", [](const std::string& n) { return BuildVgg(n, 13, false); }},
      {"vgg13_bn", [](const std::string& n) { return BuildVgg(n, 13, true); }},
      {"vgg16", [](const std::string& n) { return BuildVgg(n, 16, false); }},
      {"vgg16_bn", [](const std::string& n) { return BuildVgg(n, 16, true); }},
      {"vgg19", [](const std::string& n) { return BuildVgg(n, 19, false); }},
      {"vgg19_bn", [](const std::string& n) { return BuildVgg(n, 19, true); }},
      {"densenet121", [](const std::string& n) { return BuildDenseNet(n, {6, 12, 24, 16}); }},
      {"densenet169", [](const std::string& n) { return BuildDenseNet(n, {6, 12, 32, 32}); }},
      {"inception_v3", [](const std::string& n) { return BuildInceptionV3(n); }},
      {"mobilenet_v2", [](const std::string& n) { return BuildMobileNetV2(n); }},
      {"mobilenet_v3_small", [](const std::string& n) { return BuildMobileNetV3(n, /*large=*/false); }},
      {"mobilenet_v3_large", [](const std::string& n) { return BuildMobileNetV3(n, /*large=*/true); }},
      {"efficientnet_b0", [](const std::string& n) { return BuildEfficientNet(n, 0); }},
      {"efficientnet_b1", [](const std::string& n) { return BuildEfficientNet(n, 1); }},
      {"efficientnet_b2", [](const std::string& n) { return BuildEfficientNet(n, 2); }},
      {"efficientnet_b3", [](const std::string& n) { return BuildEfficientNet(n, 3); }},
      {"convnext_tiny", [](const std::string& n) { return BuildConvNeXt(n, /*small=*/false); }},
      {"convnext_small", [](const std::string& n) { return BuildConvNeXt(n, /*small=*/true); }},
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

absl::StatusOr<Backbone> LoadTorchScriptBackbone(const std::string& path, int probe_size) {
  Backbone b;
  b.name = kTorchScriptBackbone;
  try {
    b.module = torch::jit::load(path, torch::kCPU);
  } catch (const std::exception& e) {
    return absl::FailedPreconditionError(
        absl::StrCat("weights ", path, " is not a TorchScript module (torch.jit.save): ",
                     std::string(e.what()).substr(0, 300)));
  }
  if (!b.module.find_method("forward")) {
    return absl::FailedPreconditionError(absl::StrCat("TorchScript backbone ", path, " has no forward"));
  }
  for (const auto& child : b.module.named_children()) {
    b.stage_names.push_back(child.name);
    b.stages.push_back({child.name});
  }
  try {
    torch::NoGradGuard no_grad;
    b.module.eval();
    auto out = b.module.forward({torch::zeros({1, 3, probe_size, probe_size})});
    if (!out.isTensor() || out.toTensor().dim() != 2) {
      return absl::FailedPreconditionError(absl::StrCat(
          "TorchScript backbone ", path,
          ": forward must return pooled features [N, D] (replace the model's head with Identity)"));
    }
    b.feature_dim = out.toTensor().size(1);
  } catch (const std::exception& e) {
    return absl::FailedPreconditionError(absl::StrCat("TorchScript backbone ", path, " fails on a ",
                                                      probe_size, "px input: ",
                                                      std::string(e.what()).substr(0, 300)));
  }
  b.module.train();
  return b;
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
      // A stage entry may be a path into the backbone ("features.3").
      torch::jit::Module sub = bb;
      for (absl::string_view part : absl::StrSplit(child, '.')) sub = sub.attr(std::string(part)).toModule();
      for (const auto& p : sub.parameters()) p.requires_grad_(false);
      sub.eval();
    }
  }
}

}  // namespace ft::worker
