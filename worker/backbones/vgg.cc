#include "worker/backbones/vgg.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "worker/backbones/blocks.h"
#include "worker/backbones/jit_modules.h"

namespace ft::worker {
namespace {

using torch::jit::Module;

constexpr int64_t kMaxPool = 0;  // "M" in torchvision's cfgs.
constexpr int64_t kFeatureDim = 4096;
constexpr double kDropout = 0.5;

std::vector<int64_t> Config(int depth) {
  const int64_t M = kMaxPool;
  switch (depth) {
    case 11: return {64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M};
    case 13: return {64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M};
    case 16: return {64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M};
    default:  // 19
      return {64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M};
  }
}

// Parameterless modules, so that Sequential indices are torchvision's.
Module ReLU() {
  Module m = NewModule("ReLU");
  m.define(R"(
def forward(self, x):
    return torch.relu(x)
)");
  return m;
}

Module MaxPool2x2() {
  Module m = NewModule("MaxPool2d");
  m.define(R"(
def forward(self, x):
    return torch.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
)");
  return m;
}

Module Dropout() {
  Module m = NewModule("Dropout");
  m.define(absl::StrCat(R"(
def forward(self, x):
    return torch.dropout(x, )",
                        kDropout, R"(, self.training)
)"));
  return m;
}

// torchvision's VGG init for its Linear layers: normal(0, 0.01), bias 0.
Module VggLinear(int64_t in, int64_t out) {
  Module m = Linear(in, out);
  torch::NoGradGuard no_grad;
  m.attr("weight").toTensor().normal_(0, 0.01);
  m.attr("bias").toTensor().zero_();
  return m;
}

}  // namespace

Backbone BuildVgg(const std::string& name, int depth, bool batch_norm) {
  Backbone b;
  std::vector<Module> features;
  std::vector<std::string> block;
  int64_t in = 3;
  for (int64_t v : Config(depth)) {
    if (v == kMaxPool) {
      block.push_back(absl::StrCat("features.", features.size()));
      features.push_back(MaxPool2x2());
      b.stage_names.push_back(absl::StrCat("block", b.stages.size() + 1));
      b.stages.push_back(block);
      block.clear();
      continue;
    }
    // torchvision's init for these convolutions is the helper's:
    // kaiming_normal_(fan_out, relu), bias 0.
    ConvOptions conv;
    conv.padding = 1;
    conv.bias = true;
    block.push_back(absl::StrCat("features.", features.size()));
    features.push_back(Conv2d(in, v, 3, conv));
    if (batch_norm) {
      block.push_back(absl::StrCat("features.", features.size()));
      features.push_back(BatchNorm2d(v));
    }
    block.push_back(absl::StrCat("features.", features.size()));
    features.push_back(ReLU());
    in = v;
  }
  constexpr int64_t kPooled = 512 * 7 * 7;
  Module m = NewModule("VGGBackbone");
  m.register_module("features", Sequential(features));
  m.register_module("classifier", Sequential({VggLinear(kPooled, kFeatureDim), ReLU(), Dropout(),
                                              VggLinear(kFeatureDim, kFeatureDim), ReLU(), Dropout()}));
  b.name = name;
  b.module = m;
  b.stage_names.push_back("classifier");
  b.stages.push_back({"classifier"});
  b.feature_dim = kFeatureDim;
  b.head_prefixes = {"classifier.6."};
  DefineStagedFeatures(b.module, b.stages, {"x = torch.flatten(torch.adaptive_avg_pool2d(x, [7, 7]), 1)"});
  b.staged = true;
  return b;
}

}  // namespace ft::worker
