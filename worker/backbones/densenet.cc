#include "worker/backbones/densenet.h"

#include <cmath>
#include <regex>

#include "absl/strings/str_cat.h"
#include "worker/backbones/jit_modules.h"

namespace ft::worker {
namespace {

using torch::jit::Module;

constexpr int64_t kBottleneckWidth = 4;  // torchvision's bn_size.

// torchvision's DenseNet init: kaiming_normal_ with its defaults (fan_in,
// gain sqrt(2)), unlike the fan_out of the helper's Conv2d.
Module DenseConv(int64_t in, int64_t out, int64_t kernel, const ConvOptions& options) {
  Module m = Conv2d(in, out, kernel, options);
  torch::NoGradGuard no_grad;
  const double fan_in = static_cast<double>(in) * kernel * kernel;
  m.attr("weight").toTensor().normal_(0, std::sqrt(2.0 / fan_in));
  return m;
}

Module DenseLayer(int64_t in, int64_t growth_rate) {
  const int64_t width = kBottleneckWidth * growth_rate;
  Module m = NewModule("_DenseLayer");
  m.register_module("norm1", BatchNorm2d(in));
  m.register_module("conv1", DenseConv(in, width, 1, {}));
  m.register_module("norm2", BatchNorm2d(width));
  m.register_module("conv2", DenseConv(width, growth_rate, 3, {/*stride=*/1, /*padding=*/1}));
  // torchvision's drop_rate is 0 for all its DenseNets, so no dropout.
  m.define(R"(
def forward(self, x):
    x = self.conv1.forward(torch.relu(self.norm1.forward(x)))
    return self.conv2.forward(torch.relu(self.norm2.forward(x)))
)");
  return m;
}

// Each layer sees the concatenation of the block's input and every earlier
// layer's output.
Module DenseBlock(int64_t layers, int64_t in, int64_t growth_rate) {
  Module m = NewModule("_DenseBlock");
  std::string body = "def forward(self, x):\n    features = [x]\n";
  for (int64_t i = 1; i <= layers; ++i) {
    m.register_module(absl::StrCat("denselayer", i), DenseLayer(in + (i - 1) * growth_rate, growth_rate));
    absl::StrAppend(&body, "    features.append(self.denselayer", i,
                    ".forward(torch.cat(features, 1)))\n");
  }
  absl::StrAppend(&body, "    return torch.cat(features, 1)\n");
  m.define(body);
  return m;
}

Module Transition(int64_t in, int64_t out) {
  Module m = NewModule("_Transition");
  m.register_module("norm", BatchNorm2d(in));
  m.register_module("conv", DenseConv(in, out, 1, {}));
  m.define(R"(
def forward(self, x):
    x = self.conv.forward(torch.relu(self.norm.forward(x)))
    return torch.avg_pool2d(x, [2, 2], [2, 2], [0, 0], False, True, None)
)");
  return m;
}

}  // namespace

Backbone BuildDenseNet(const std::string& name, const std::vector<int64_t>& block_config,
                       int64_t growth_rate, int64_t num_init_features) {
  Backbone b;
  Module features = NewModule("DenseNetFeatures");
  features.register_module("conv0", DenseConv(3, num_init_features, 7, {/*stride=*/2, /*padding=*/3}));
  features.register_module("norm0", BatchNorm2d(num_init_features));
  b.stage_names.push_back("stem");
  b.stages.push_back({"features.conv0", "features.norm0"});
  std::string body = R"(
def forward(self, x):
    x = torch.relu(self.norm0.forward(self.conv0.forward(x)))
    x = torch.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
)";
  int64_t channels = num_init_features;
  for (size_t i = 0; i < block_config.size(); ++i) {
    const std::string block = absl::StrCat("denseblock", i + 1);
    features.register_module(block, DenseBlock(block_config[i], channels, growth_rate));
    absl::StrAppend(&body, "    x = self.", block, ".forward(x)\n");
    channels += block_config[i] * growth_rate;
    std::vector<std::string> stage = {absl::StrCat("features.", block)};
    if (i + 1 < block_config.size()) {
      const std::string transition = absl::StrCat("transition", i + 1);
      features.register_module(transition, Transition(channels, channels / 2));
      absl::StrAppend(&body, "    x = self.", transition, ".forward(x)\n");
      stage.push_back(absl::StrCat("features.", transition));
      channels /= 2;
    } else {
      features.register_module("norm5", BatchNorm2d(channels));
      absl::StrAppend(&body, "    x = self.norm5.forward(x)\n");
      stage.push_back("features.norm5");
    }
    b.stage_names.push_back(absl::StrCat("block", i + 1));
    b.stages.push_back(stage);
  }
  absl::StrAppend(&body, "    return x\n");
  features.define(body);

  Module m = NewModule("DenseNetBackbone");
  m.register_module("features", features);
  m.define(R"(
def forward(self, x):
    x = torch.relu(self.features.forward(x))
    return torch.flatten(torch.adaptive_avg_pool2d(x, [1, 1]), 1)
)");
  b.name = name;
  b.module = m;
  b.feature_dim = channels;
  b.head_prefixes = {"classifier."};
  return b;
}

std::string RemapDensenetKey(const std::string& key) {
  // torchvision's own pattern (densenet.py, _load_state_dict).
  static const auto* kOldKey = new std::regex(
      R"(^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$)");
  std::smatch match;
  if (!std::regex_match(key, match, *kOldKey)) return key;
  return absl::StrCat(match[1].str(), match[2].str());
}

}  // namespace ft::worker
