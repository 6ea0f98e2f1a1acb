#include "worker/backbones/mobilenet.h"

#include <vector>

#include "worker/backbones/blocks.h"
#include "worker/backbones/jit_modules.h"

namespace ft::worker {
namespace {

using torch::jit::Module;

// Appends `more` to `v`.
std::vector<std::string> Concat(std::vector<std::string> v, const std::vector<std::string>& more) {
  v.insert(v.end(), more.begin(), more.end());
  return v;
}

Module InvertedResidualV2(int64_t in, int64_t out, int64_t stride, int64_t expand_ratio) {
  const BatchNormOptions bn;
  const int64_t hidden = in * expand_ratio;
  std::vector<Module> layers;
  if (expand_ratio != 1) {
    layers.push_back(Conv2dNormActivation(in, hidden, /*kernel=*/1, /*stride=*/1, /*groups=*/1, bn, "ReLU6"));
  }
  layers.push_back(
      Conv2dNormActivation(hidden, hidden, /*kernel=*/3, stride, /*groups=*/hidden, bn, "ReLU6"));
  layers.push_back(Conv2d(hidden, out, /*kernel=*/1, {}));
  layers.push_back(BatchNorm2d(out, bn.eps, bn.momentum));
  Module m = NewModule("InvertedResidual");
  m.register_module("conv", Sequential(layers));
  if (stride == 1 && in == out) {
    m.define("def forward(self, x):\n    return x + self.conv.forward(x)\n");
  } else {
    m.define("def forward(self, x):\n    return self.conv.forward(x)\n");
  }
  return m;
}

struct V3Block {
  int64_t in, kernel, expanded, out;
  bool use_se, use_hs;
  int64_t stride;
};

Module InvertedResidualV3(const V3Block& c, const BatchNormOptions& bn) {
  const std::string act = c.use_hs ? "Hardswish" : "ReLU";
  std::vector<Module> layers;
  if (c.expanded != c.in) {
    layers.push_back(
        Conv2dNormActivation(c.in, c.expanded, /*kernel=*/1, /*stride=*/1, /*groups=*/1, bn, act));
  }
  layers.push_back(
      Conv2dNormActivation(c.expanded, c.expanded, c.kernel, c.stride, /*groups=*/c.expanded, bn, act));
  if (c.use_se) {
    layers.push_back(SqueezeExcitation(c.expanded, MakeDivisible(static_cast<double>(c.expanded / 4)), "ReLU",
                                       "Hardsigmoid"));
  }
  layers.push_back(Conv2dNormActivation(c.expanded, c.out, /*kernel=*/1, /*stride=*/1, /*groups=*/1, bn, ""));
  Module m = NewModule("InvertedResidual");
  m.register_module("block", Sequential(layers));
  if (c.stride == 1 && c.in == c.out) {
    m.define("def forward(self, x):\n    return self.block.forward(x) + x\n");
  } else {
    m.define("def forward(self, x):\n    return self.block.forward(x)\n");
  }
  return m;
}

}  // namespace

Backbone BuildMobileNetV2(const std::string& name) {
  struct Setting {
    int64_t t, c, n, s;
  };
  const std::vector<Setting> settings = {{1, 16, 1, 1}, {6, 24, 2, 2},  {6, 32, 3, 2}, {6, 64, 4, 2},
                                         {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
  constexpr int64_t kLastChannel = 1280;
  const BatchNormOptions bn;
  std::vector<Module> features = {
      Conv2dNormActivation(3, 32, /*kernel=*/3, /*stride=*/2, /*groups=*/1, bn, "ReLU6")};
  int64_t in = 32;
  for (const auto& s : settings) {
    for (int64_t i = 0; i < s.n; ++i) {
      features.push_back(InvertedResidualV2(in, s.c, i == 0 ? s.s : 1, s.t));
      in = s.c;
    }
  }
  features.push_back(
      Conv2dNormActivation(in, kLastChannel, /*kernel=*/1, /*stride=*/1, /*groups=*/1, bn, "ReLU6"));

  Module m = FeaturesPoolClassifier("MobileNetV2Backbone", features, {Dropout(0.2)});
  Backbone b;
  b.name = name;
  b.module = m;
  b.stage_names = {"stem", "stage1", "stage2", "stage3", "stage4", "final"};
  b.stages = {ChildPaths("features", 0, 1),  ChildPaths("features", 2, 3),   ChildPaths("features", 4, 6),
              ChildPaths("features", 7, 13), ChildPaths("features", 14, 17), {"features.18", "classifier"}};
  b.feature_dim = kLastChannel;
  b.head_prefixes = {"classifier.1."};
  DefineStagedFeatures(b.module, b.stages, {"x = torch.flatten(torch.adaptive_avg_pool2d(x, [1, 1]), 1)"});
  b.staged = true;
  return b;
}

Backbone BuildMobileNetV3(const std::string& name, bool large) {
  // torchvision's _mobilenet_v3_conf with width_mult 1 (all channel counts
  // are already multiples of 8), no reduced tail, no dilation.
  const std::vector<V3Block> large_blocks = {
      {16, 3, 16, 16, false, false, 1},  {16, 3, 64, 24, false, false, 2},  {24, 3, 72, 24, false, false, 1},
      {24, 5, 72, 40, true, false, 2},   {40, 5, 120, 40, true, false, 1},  {40, 5, 120, 40, true, false, 1},
      {40, 3, 240, 80, false, true, 2},  {80, 3, 200, 80, false, true, 1},  {80, 3, 184, 80, false, true, 1},
      {80, 3, 184, 80, false, true, 1},  {80, 3, 480, 112, true, true, 1},  {112, 3, 672, 112, true, true, 1},
      {112, 5, 672, 160, true, true, 2}, {160, 5, 960, 160, true, true, 1}, {160, 5, 960, 160, true, true, 1},
  };
  const std::vector<V3Block> small_blocks = {
      {16, 3, 16, 16, true, false, 2}, {16, 3, 72, 24, false, false, 2}, {24, 3, 88, 24, false, false, 1},
      {24, 5, 96, 40, true, true, 2},  {40, 5, 240, 40, true, true, 1},  {40, 5, 240, 40, true, true, 1},
      {40, 5, 120, 48, true, true, 1}, {48, 5, 144, 48, true, true, 1},  {48, 5, 288, 96, true, true, 2},
      {96, 5, 576, 96, true, true, 1}, {96, 5, 576, 96, true, true, 1},
  };
  const auto& blocks = large ? large_blocks : small_blocks;
  const int64_t last_channel = large ? 1280 : 1024;
  const BatchNormOptions bn{/*eps=*/0.001, /*momentum=*/0.01};

  std::vector<Module> features = {
      Conv2dNormActivation(3, blocks.front().in, /*kernel=*/3, /*stride=*/2, /*groups=*/1, bn, "Hardswish")};
  for (const auto& c : blocks) features.push_back(InvertedResidualV3(c, bn));
  const int64_t lastconv_in = blocks.back().out;
  const int64_t lastconv_out = 6 * lastconv_in;
  features.push_back(Conv2dNormActivation(lastconv_in, lastconv_out, /*kernel=*/1, /*stride=*/1, /*groups=*/1,
                                          bn, "Hardswish"));
  const int last = static_cast<int>(features.size()) - 1;

  Module linear = Linear(lastconv_out, last_channel);
  InitNormal(linear, 0.01);
  Module m = FeaturesPoolClassifier("MobileNetV3Backbone", features, {linear, Activation("Hardswish"), Dropout(0.2)});
  Backbone b;
  b.name = name;
  b.module = m;
  b.stage_names = {"stem", "stage1", "stage2", "stage3", "stage4", "final"};
  if (large) {
    b.stages = {ChildPaths("features", 0, 1), ChildPaths("features", 2, 3), ChildPaths("features", 4, 6),
                ChildPaths("features", 7, 12), ChildPaths("features", 13, 15)};
  } else {
    b.stages = {ChildPaths("features", 0, 0), ChildPaths("features", 1, 1), ChildPaths("features", 2, 3),
                ChildPaths("features", 4, 8), ChildPaths("features", 9, 11)};
  }
  b.stages.push_back(Concat(ChildPaths("features", last, last), {"classifier"}));
  b.feature_dim = last_channel;
  b.head_prefixes = {"classifier.3."};
  DefineStagedFeatures(b.module, b.stages, {"x = torch.flatten(torch.adaptive_avg_pool2d(x, [1, 1]), 1)"});
  b.staged = true;
  return b;
}

}  // namespace ft::worker
