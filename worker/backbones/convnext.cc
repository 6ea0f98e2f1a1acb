#include "worker/backbones/convnext.h"

#include <vector>

#include "worker/backbones/blocks.h"
#include "worker/backbones/jit_modules.h"

namespace ft::worker {
namespace {

using torch::jit::Module;

constexpr double kNormEps = 1e-6;
constexpr double kLayerScale = 1e-6;
// torchvision initialises every Conv2d and Linear with trunc_normal_(std=0.02).
constexpr double kInitStd = 0.02;

Module ConvWithBias(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding,
                    int64_t groups) {
  ConvOptions o;
  o.stride = stride;
  o.padding = padding;
  o.groups = groups;
  o.bias = true;
  Module conv = Conv2d(in, out, kernel, o);
  InitTruncNormal(conv, kInitStd);
  return conv;
}

Module LinearTrunc(int64_t in, int64_t out) {
  Module linear = Linear(in, out);
  InitTruncNormal(linear, kInitStd);
  return linear;
}

Module CNBlock(int64_t dim, double stochastic_depth_prob) {
  Module m = NewModule("CNBlock");
  m.register_module("block",
                    Sequential({
                        ConvWithBias(dim, dim, /*kernel=*/7, /*stride=*/1, /*padding=*/3, /*groups=*/dim),
                        Permute({0, 2, 3, 1}),
                        LayerNorm(dim, kNormEps),
                        LinearTrunc(dim, 4 * dim),
                        Activation("GELU"),
                        LinearTrunc(4 * dim, dim),
                        Permute({0, 3, 1, 2}),
                    }));
  AddParameter(m, "layer_scale", torch::full({dim, 1, 1}, kLayerScale));
  m.register_module("stochastic_depth", StochasticDepth(stochastic_depth_prob));
  m.define(R"(
def forward(self, x):
    result = self.layer_scale * self.block.forward(x)
    return self.stochastic_depth.forward(result) + x
)");
  return m;
}

}  // namespace

Backbone BuildConvNeXt(const std::string& name, bool small) {
  struct StageSetting {
    int64_t in, out, layers;  // out 0: no downsampling after the stage
  };
  const std::vector<StageSetting> settings = {
      {96, 192, 3}, {192, 384, 3}, {384, 768, small ? 27 : 9}, {768, 0, 3}};
  const double stochastic_depth_prob = small ? 0.4 : 0.1;
  int64_t total_blocks = 0;
  for (const auto& s : settings) total_blocks += s.layers;

  std::vector<Module> features = {Sequential(
      {ConvWithBias(3, settings.front().in, /*kernel=*/4, /*stride=*/4, /*padding=*/0, /*groups=*/1),
       LayerNorm2d(settings.front().in, kNormEps)})};
  int64_t block_id = 0;
  for (const auto& s : settings) {
    std::vector<Module> stage;
    for (int64_t i = 0; i < s.layers; ++i) {
      const double sd_prob =
          stochastic_depth_prob * static_cast<double>(block_id) / (static_cast<double>(total_blocks) - 1.0);
      stage.push_back(CNBlock(s.in, sd_prob));
      ++block_id;
    }
    features.push_back(Sequential(stage));
    if (s.out != 0) {
      features.push_back(
          Sequential({LayerNorm2d(s.in, kNormEps),
                      ConvWithBias(s.in, s.out, /*kernel=*/2, /*stride=*/2, /*padding=*/0, /*groups=*/1)}));
    }
  }
  const int64_t dim = settings.back().in;

  Module m = NewModule("ConvNeXtBackbone");
  m.register_module("features", Sequential(features));
  m.register_module("classifier", Sequential({LayerNorm2d(dim, kNormEps), Flatten()}));
  Backbone b;
  b.name = name;
  b.module = m;
  b.stage_names = {"stem", "stage1", "stage2", "stage3", "stage4", "final"};
  b.stages = {{"features.0"},
              {"features.1"},
              ChildPaths("features", 2, 3),
              ChildPaths("features", 4, 5),
              ChildPaths("features", 6, 7),
              {"classifier"}};
  b.feature_dim = dim;
  b.head_prefixes = {"classifier.2."};
  DefineStagedFeatures(b.module, b.stages, {"x = torch.adaptive_avg_pool2d(x, [1, 1])"});
  b.staged = true;
  return b;
}

}  // namespace ft::worker
