#include "worker/backbones/blocks.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace ft::worker {

using torch::jit::Module;

int64_t MakeDivisible(double v, int64_t divisor, int64_t min_value) {
  if (min_value == 0) min_value = divisor;
  // int(v + divisor / 2) // divisor * divisor, with Python's truncation.
  int64_t new_v =
      std::max(min_value, static_cast<int64_t>(v + static_cast<double>(divisor) / 2) / divisor * divisor);
  if (static_cast<double>(new_v) < 0.9 * v) new_v += divisor;
  return new_v;
}

Module Activation(const std::string& kind) {
  static const auto* kExpressions = new std::map<std::string, std::string>{
      {"ReLU", "torch.relu(x)"},           {"ReLU6", "torch.hardtanh(x, 0.0, 6.0)"},
      {"Hardswish", "torch.hardswish(x)"}, {"Hardsigmoid", "torch.hardsigmoid(x)"},
      {"SiLU", "torch.silu(x)"},           {"Sigmoid", "torch.sigmoid(x)"},
      {"GELU", "torch.gelu(x)"},
  };
  auto it = kExpressions->find(kind);
  TORCH_CHECK(it != kExpressions->end(), "unknown activation ", kind);
  Module m = NewModule(kind);
  m.define(absl::StrCat("def forward(self, x):\n    return ", it->second, "\n"));
  return m;
}

Module Dropout(double p) {
  Module m = NewModule("Dropout");
  m.define(absl::StrFormat(R"(
def forward(self, x):
    return torch.dropout(x, %.17g, self.training)
)",
                           p));
  return m;
}

Module StochasticDepth(double p) {
  Module m = NewModule("StochasticDepth");
  if (p == 0.0) {
    m.define("def forward(self, x):\n    return x\n");
    return m;
  }
  const double survival = 1.0 - p;
  // torchvision.ops.stochastic_depth, mode "row": one draw per sample.
  m.define(absl::StrFormat(R"(
def forward(self, x):
    if not self.training:
        return x
    size = [x.size(0)]
    for _ in range(x.dim() - 1):
        size.append(1)
    noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(%.17g)
    noise.div_(%.17g)
    return x * noise
)",
                           survival, survival));
  return m;
}

Module Flatten() {
  Module m = NewModule("Flatten");
  m.define("def forward(self, x):\n    return torch.flatten(x, 1)\n");
  return m;
}

Module Permute(const std::vector<int64_t>& dims) {
  Module m = NewModule("Permute");
  m.define(absl::StrCat("def forward(self, x):\n    return x.permute([", absl::StrJoin(dims, ", "), "])\n"));
  return m;
}

Module LayerNorm(int64_t channels, double eps) {
  Module m = NewModule("LayerNorm");
  AddParameter(m, "weight", torch::ones({channels}));
  AddParameter(m, "bias", torch::zeros({channels}));
  m.define(absl::StrFormat(R"(
def forward(self, x):
    return torch.layer_norm(x, [%d], self.weight, self.bias, %.17g, True)
)",
                           channels, eps));
  return m;
}

Module LayerNorm2d(int64_t channels, double eps) {
  Module m = NewModule("LayerNorm2d");
  AddParameter(m, "weight", torch::ones({channels}));
  AddParameter(m, "bias", torch::zeros({channels}));
  m.define(absl::StrFormat(R"(
def forward(self, x):
    x = x.permute([0, 2, 3, 1])
    x = torch.layer_norm(x, [%d], self.weight, self.bias, %.17g, True)
    return x.permute([0, 3, 1, 2])
)",
                           channels, eps));
  return m;
}

Module Conv2dNormActivation(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t groups,
                            const BatchNormOptions& bn, const std::string& activation) {
  ConvOptions conv;
  conv.stride = stride;
  conv.padding = (kernel - 1) / 2;
  conv.groups = groups;
  std::vector<Module> layers = {Conv2d(in, out, kernel, conv), BatchNorm2d(out, bn.eps, bn.momentum)};
  if (!activation.empty()) layers.push_back(Activation(activation));
  return Sequential(layers);
}

Module SqueezeExcitation(int64_t channels, int64_t squeeze_channels, const std::string& activation,
                         const std::string& scale_activation) {
  Module m = NewModule("SqueezeExcitation");
  ConvOptions with_bias;
  with_bias.bias = true;
  m.register_module("fc1", Conv2d(channels, squeeze_channels, 1, with_bias));
  m.register_module("fc2", Conv2d(squeeze_channels, channels, 1, with_bias));
  m.register_module("activation", Activation(activation));
  m.register_module("scale_activation", Activation(scale_activation));
  m.define(R"(
def forward(self, x):
    scale = torch.adaptive_avg_pool2d(x, [1, 1])
    scale = self.activation.forward(self.fc1.forward(scale))
    scale = self.scale_activation.forward(self.fc2.forward(scale))
    return scale * x
)");
  return m;
}

std::vector<std::string> ChildPaths(const std::string& parent, int first, int last) {
  std::vector<std::string> paths;
  for (int i = first; i <= last; ++i) paths.push_back(absl::StrCat(parent, ".", i));
  return paths;
}

namespace {

void ZeroBias(Module& m) {
  if (m.hasattr("bias") && m.attr("bias").isTensor()) m.attr("bias").toTensor().zero_();
}

}  // namespace

void InitNormal(Module& m, double std) {
  torch::NoGradGuard no_grad;
  m.attr("weight").toTensor().normal_(0, std);
  ZeroBias(m);
}

void InitUniform(Module& m, double bound) {
  torch::NoGradGuard no_grad;
  m.attr("weight").toTensor().uniform_(-bound, bound);
  ZeroBias(m);
}

void InitTruncNormal(Module& m, double std) {
  torch::NoGradGuard no_grad;
  // nn.init.trunc_normal_ cuts at the absolute values -2 and 2, so for the
  // small stds used here a clamped normal has the same distribution.
  m.attr("weight").toTensor().normal_(0, std).clamp_(-2.0, 2.0);
  ZeroBias(m);
}

torch::jit::Module FeaturesPoolClassifier(const std::string& cls, const std::vector<torch::jit::Module>& features,
                                          const std::vector<torch::jit::Module>& classifier) {
  torch::jit::Module m = NewModule(cls);
  m.register_module("features", Sequential(features));
  m.register_module("classifier", Sequential(classifier));
  return m;
}

void DefineStagedFeatures(torch::jit::Module& m, const std::vector<std::vector<std::string>>& stages,
                          const std::vector<std::string>& pool) {
  const std::string classifier_line = "x = self.classifier.forward(x)";
  std::vector<std::vector<std::string>> lines;
  bool classified = false;
  for (const auto& stage : stages) {
    lines.emplace_back();
    for (const auto& path : stage) {
      if (path == "classifier") {
        lines.back().insert(lines.back().end(), pool.begin(), pool.end());
        lines.back().push_back(classifier_line);
        classified = true;
      } else {
        lines.back().push_back(absl::StrCat("x = getattr(self.features, \"", path.substr(path.find('.') + 1),
                                            "\").forward(x)"));
      }
    }
  }
  std::vector<std::string> tail;
  if (!classified) {
    tail = pool;
    tail.push_back(classifier_line);
  }
  DefineStagedForward(m, lines, tail);
}

}  // namespace ft::worker
