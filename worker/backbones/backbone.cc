#include "worker/backbones/backbone.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/ascii.h"
#include "common/util/status.h"
#include "worker/backbones/jit_modules.h"
#include "worker/backbones/resnet.h"
#include "worker/backbones/densenet.h"
#include "worker/backbones/inception.h"
#include "worker/backbones/vgg.h"
#include "worker/backbones/convnext.h"
#include "worker/backbones/efficientnet.h"
#include "worker/backbones/mobilenet.h"
// FAMILY HEADERS (keep this marker)
#include "common/catalog/catalog.h"

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
  FT_ASSIGN_OR_RETURN(b.normalization,
                      NormalizationFromModule(b.module, absl::StrCat("TorchScript backbone ", path)));
  b.module.train();
  return b;
}

absl::StatusOr<Normalization> MakeNormalization(const std::vector<double>& mean, const std::vector<double>& std,
                                                const std::string& source) {
  if (mean.size() != 3 || std.size() != 3) {
    return absl::FailedPreconditionError(absl::StrCat(source, ": mean and std must have 3 values each (R, G, B), got ",
                                                      mean.size(), " and ", std.size()));
  }
  Normalization n;
  n.source = source;
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(mean[c]) || !std::isfinite(std[c]) || std[c] <= 0) {
      return absl::FailedPreconditionError(absl::StrCat(source, ": mean ", mean[c], " / std ", std[c],
                                                        " is not a usable normalisation (finite, std > 0)"));
    }
    n.mean[c] = static_cast<float>(mean[c]);
    n.std[c] = static_cast<float>(std[c]);
  }
  return n;
}

absl::StatusOr<std::optional<Normalization>> NormalizationFromModule(const torch::jit::Module& module,
                                                                     const std::string& source) {
  const bool has_mean = module.hasattr("mean"), has_std = module.hasattr("std");
  if (!has_mean && !has_std) return std::nullopt;
  if (has_mean != has_std) {
    return absl::FailedPreconditionError(absl::StrCat(source, " has a `", has_mean ? "mean" : "std",
                                                      "` attribute but no `", has_mean ? "std" : "mean", "`"));
  }
  auto numbers = [&](const char* name) -> absl::StatusOr<std::vector<double>> {
    const c10::IValue v = module.attr(name);
    std::vector<double> out;
    if (v.isTensor()) {
      const at::Tensor t = v.toTensor().detach().to(torch::kCPU, torch::kDouble).flatten();
      for (int64_t i = 0; i < t.numel() && i < 4; ++i) out.push_back(t[i].item<double>());
    } else if (v.isList()) {
      for (const c10::IValue& e : v.toListRef()) {
        if (!e.isDouble() && !e.isInt()) break;
        out.push_back(e.isDouble() ? e.toDouble() : static_cast<double>(e.toInt()));
      }
    } else {
      return absl::FailedPreconditionError(
          absl::StrCat(source, ": attribute `", name, "` is neither a list of numbers nor a tensor"));
    }
    return out;
  };
  FT_ASSIGN_OR_RETURN(std::vector<double> mean, numbers("mean"));
  FT_ASSIGN_OR_RETURN(std::vector<double> std, numbers("std"));
  FT_ASSIGN_OR_RETURN(Normalization n, MakeNormalization(mean, std, source));
  return n;
}

void StoreNormalization(const Normalization& norm, torch::jit::Module& module) {
  for (const auto& [name, values] : {std::pair<const char*, std::array<float, 3>>{"mean", norm.mean},
                                     std::pair<const char*, std::array<float, 3>>{"std", norm.std}}) {
    module.register_attribute(name, c10::ListType::ofFloats(),
                              c10::List<double>(std::vector<double>(values.begin(), values.end())));
  }
}

absl::StatusOr<std::optional<Normalization>> NormalizationFromMetadata(
    const std::map<std::string, std::string>& metadata, const std::string& source) {
  auto mean_it = metadata.find("mean"), std_it = metadata.find("std");
  if (mean_it == metadata.end() && std_it == metadata.end()) return std::nullopt;
  auto numbers = [&](const char* name,
                     std::map<std::string, std::string>::const_iterator it) -> absl::StatusOr<std::vector<double>> {
    if (it == metadata.end()) {
      return absl::FailedPreconditionError(absl::StrCat(source, ": metadata has no \"", name, "\" to go with the other"));
    }
    std::vector<double> out;
    for (absl::string_view part : absl::StrSplit(absl::StripAsciiWhitespace(absl::StripSuffix(
                                                     absl::StripPrefix(absl::StripAsciiWhitespace(it->second), "["), "]")),
                                                 ',')) {
      double v;
      if (!absl::SimpleAtod(absl::StripAsciiWhitespace(part), &v)) {
        return absl::FailedPreconditionError(
            absl::StrCat(source, ": metadata \"", name, "\" is not a list of numbers: ", it->second.substr(0, 100)));
      }
      out.push_back(v);
    }
    return out;
  };
  FT_ASSIGN_OR_RETURN(std::vector<double> mean, numbers("mean", mean_it));
  FT_ASSIGN_OR_RETURN(std::vector<double> std, numbers("std", std_it));
  FT_ASSIGN_OR_RETURN(Normalization n, MakeNormalization(mean, std, source));
  return n;
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
