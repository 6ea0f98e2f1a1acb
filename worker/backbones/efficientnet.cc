#include "worker/backbones/efficientnet.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "worker/backbones/blocks.h"
#include "worker/backbones/jit_modules.h"

namespace ft::worker {
namespace {

using torch::jit::Module;

// torchvision's MBConvConfig.
struct MBConvSetting {
  double expand_ratio;
  int64_t kernel, stride, in, out, layers;
};

Module MBConv(const MBConvSetting& c, double stochastic_depth_prob) {
  const BatchNormOptions bn;
  const int64_t expanded = MakeDivisible(static_cast<double>(c.in) * c.expand_ratio);
  std::vector<Module> layers;
  if (expanded != c.in) {
    layers.push_back(
        Conv2dNormActivation(c.in, expanded, /*kernel=*/1, /*stride=*/1, /*groups=*/1, bn, "SiLU"));
  }
  layers.push_back(
      Conv2dNormActivation(expanded, expanded, c.kernel, c.stride, /*groups=*/expanded, bn, "SiLU"));
  layers.push_back(SqueezeExcitation(expanded, std::max<int64_t>(1, c.in / 4), "SiLU", "Sigmoid"));
  layers.push_back(Conv2dNormActivation(expanded, c.out, /*kernel=*/1, /*stride=*/1, /*groups=*/1, bn, ""));
  Module m = NewModule("MBConv");
  m.register_module("block", Sequential(layers));
  m.register_module("stochastic_depth", StochasticDepth(stochastic_depth_prob));
  if (c.stride == 1 && c.in == c.out) {
    m.define(R"(
def forward(self, x):
    return self.stochastic_depth.forward(self.block.forward(x)) + x
)");
  } else {
    m.define("def forward(self, x):\n    return self.block.forward(x)\n");
  }
  return m;
}

}  // namespace

Backbone BuildEfficientNet(const std::string& name, int variant) {
  struct Variant {
    double width_mult, depth_mult, dropout;
  };
  static constexpr Variant kVariants[] = {{1.0, 1.0, 0.2}, {1.0, 1.1, 0.2}, {1.1, 1.2, 0.3}, {1.2, 1.4, 0.3}};
  TORCH_CHECK(variant >= 0 && variant <= 3, "EfficientNet variant ", variant, " is not B0-B3");
  const Variant& v = kVariants[variant];
  constexpr double kStochasticDepthProb = 0.2;

  // torchvision's _efficientnet_conf for efficientnet_b*, before scaling.
  std::vector<MBConvSetting> settings = {{1, 3, 1, 32, 16, 1},  {6, 3, 2, 16, 24, 2},  {6, 5, 2, 24, 40, 2},
                                         {6, 3, 2, 40, 80, 3},  {6, 5, 1, 80, 112, 3}, {6, 5, 2, 112, 192, 4},
                                         {6, 3, 1, 192, 320, 1}};
  int64_t total_blocks = 0;
  for (auto& s : settings) {
    s.in = MakeDivisible(static_cast<double>(s.in) * v.width_mult);
    s.out = MakeDivisible(static_cast<double>(s.out) * v.width_mult);
    s.layers = static_cast<int64_t>(std::ceil(static_cast<double>(s.layers) * v.depth_mult));
    total_blocks += s.layers;
  }

  const BatchNormOptions bn;
  std::vector<Module> features = {
      Conv2dNormActivation(3, settings.front().in, /*kernel=*/3, /*stride=*/2, /*groups=*/1, bn, "SiLU")};
  int64_t block_id = 0;
  for (const auto& s : settings) {
    std::vector<Module> stage;
    for (int64_t i = 0; i < s.layers; ++i) {
      MBConvSetting block = s;
      if (i > 0) {
        block.in = block.out;
        block.stride = 1;
      }
      const double sd_prob =
          kStochasticDepthProb * static_cast<double>(block_id) / static_cast<double>(total_blocks);
      stage.push_back(MBConv(block, sd_prob));
      ++block_id;
    }
    features.push_back(Sequential(stage));
  }
  const int64_t lastconv_in = settings.back().out;
  const int64_t lastconv_out = 4 * lastconv_in;
  features.push_back(
      Conv2dNormActivation(lastconv_in, lastconv_out, /*kernel=*/1, /*stride=*/1, /*groups=*/1, bn, "SiLU"));

  Module m = FeaturesPoolClassifier("EfficientNetBackbone", features, {Dropout(v.dropout)});
  Backbone b;
  b.name = name;
  b.module = m;
  b.stage_names = {"stem", "stage1", "stage2", "stage3", "stage4", "final"};
  b.stages = {ChildPaths("features", 0, 1),
              {"features.2"},
              {"features.3"},
              ChildPaths("features", 4, 5),
              ChildPaths("features", 6, 7),
              {"features.8", "classifier"}};
  b.feature_dim = lastconv_out;
  b.head_prefixes = {"classifier.1."};
  DefineStagedFeatures(b.module, b.stages, {"x = torch.flatten(torch.adaptive_avg_pool2d(x, [1, 1]), 1)"});
  b.staged = true;
  return b;
}

}  // namespace ft::worker
