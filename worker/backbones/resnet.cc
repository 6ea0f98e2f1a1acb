#include "worker/backbones/resnet.h"

#include "absl/strings/str_cat.h"
#include "worker/backbones/jit_modules.h"

namespace ft::worker {
namespace {

using torch::jit::Module;

Module BasicBlock(int64_t inplanes, int64_t planes, int64_t stride, bool downsample) {
  Module m = NewModule("BasicBlock");
  m.register_module("conv1", Conv2d(inplanes, planes, 3, {stride, /*padding=*/1}));
  m.register_module("bn1", BatchNorm2d(planes));
  m.register_module("conv2", Conv2d(planes, planes, 3, {1, /*padding=*/1}));
  m.register_module("bn2", BatchNorm2d(planes));
  if (downsample) {
    m.register_module("downsample", Sequential({Conv2d(inplanes, planes, 1, {stride}), BatchNorm2d(planes)}));
  }
  m.define(absl::StrCat(R"(
def forward(self, x):
    out = torch.relu(self.bn1.forward(self.conv1.forward(x)))
    out = self.bn2.forward(self.conv2.forward(out))
)",
                        downsample ? "    identity = self.downsample.forward(x)\n" : "    identity = x\n",
                        "    return torch.relu(out + identity)\n"));
  return m;
}

Module Bottleneck(int64_t inplanes, int64_t planes, int64_t stride, bool downsample, int64_t groups,
                  int64_t base_width) {
  constexpr int64_t kExpansion = 4;
  const int64_t width = planes * base_width / 64 * groups;
  Module m = NewModule("Bottleneck");
  m.register_module("conv1", Conv2d(inplanes, width, 1, {}));
  m.register_module("bn1", BatchNorm2d(width));
  ConvOptions c2;
  c2.stride = stride;
  c2.padding = 1;
  c2.groups = groups;
  m.register_module("conv2", Conv2d(width, width, 3, c2));
  m.register_module("bn2", BatchNorm2d(width));
  m.register_module("conv3", Conv2d(width, planes * kExpansion, 1, {}));
  m.register_module("bn3", BatchNorm2d(planes * kExpansion));
  if (downsample) {
    m.register_module("downsample", Sequential({Conv2d(inplanes, planes * kExpansion, 1, {stride}),
                                                BatchNorm2d(planes * kExpansion)}));
  }
  m.define(absl::StrCat(R"(
def forward(self, x):
    out = torch.relu(self.bn1.forward(self.conv1.forward(x)))
    out = torch.relu(self.bn2.forward(self.conv2.forward(out)))
    out = self.bn3.forward(self.conv3.forward(out))
)",
                        downsample ? "    identity = self.downsample.forward(x)\n" : "    identity = x\n",
                        "    return torch.relu(out + identity)\n"));
  return m;
}

}  // namespace

Backbone BuildResNet(const std::string& name, int depth, int64_t groups, int64_t width_per_group) {
  std::vector<int> blocks;
  bool bottleneck = depth >= 50;
  switch (depth) {
    case 18: blocks = {2, 2, 2, 2}; break;
    case 34: blocks = {3, 4, 6, 3}; break;
    case 50: blocks = {3, 4, 6, 3}; break;
    case 101: blocks = {3, 4, 23, 3}; break;
    default: blocks = {3, 8, 36, 3}; break;  // 152
  }
  const int64_t expansion = bottleneck ? 4 : 1;
  Module m = NewModule("ResNetBackbone");
  m.register_module("conv1", Conv2d(3, 64, 7, {/*stride=*/2, /*padding=*/3}));
  m.register_module("bn1", BatchNorm2d(64));
  int64_t inplanes = 64;
  for (int layer = 0; layer < 4; ++layer) {
    const int64_t planes = int64_t{64} << layer;
    const int64_t stride = layer == 0 ? 1 : 2;
    std::vector<Module> layer_blocks;
    for (int b = 0; b < blocks[layer]; ++b) {
      const int64_t s = b == 0 ? stride : 1;
      const bool down = b == 0 && (s != 1 || inplanes != planes * expansion);
      layer_blocks.push_back(bottleneck ? Bottleneck(inplanes, planes, s, down, groups, width_per_group)
                                        : BasicBlock(inplanes, planes, s, down));
      inplanes = planes * expansion;
    }
    m.register_module(absl::StrCat("layer", layer + 1), Sequential(layer_blocks));
  }
  DefineStagedForward(m,
                      {{"x = torch.relu(self.bn1.forward(self.conv1.forward(x)))",
                        "x = torch.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False)"},
                       {"x = self.layer1.forward(x)"},
                       {"x = self.layer2.forward(x)"},
                       {"x = self.layer3.forward(x)"},
                       {"x = self.layer4.forward(x)"}},
                      {"x = torch.flatten(torch.adaptive_avg_pool2d(x, [1, 1]), 1)"});
  Backbone b;
  b.name = name;
  b.module = m;
  b.stage_names = {"stem", "layer1", "layer2", "layer3", "layer4"};
  b.stages = {{"conv1", "bn1"}, {"layer1"}, {"layer2"}, {"layer3"}, {"layer4"}};
  b.feature_dim = 512 * expansion;
  b.head_prefixes = {"fc."};
  b.staged = true;
  return b;
}

}  // namespace ft::worker
