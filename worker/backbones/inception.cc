#include "worker/backbones/inception.h"

#include "absl/strings/str_format.h"
#include "worker/backbones/jit_modules.h"

namespace ft::worker {
namespace {

using torch::jit::Module;

constexpr int64_t kFeatureDim = 2048;
constexpr double kBatchNormEps = 0.001;
constexpr double kInitStd = 0.1;

struct ConvShape {
  int64_t kh = 1;
  int64_t kw = 1;
  int64_t stride = 1;
  int64_t ph = 0;
  int64_t pw = 0;
};

// Bias-free, possibly non-square convolution. torchvision initialises it with
// trunc_normal_(std=0.1, a=-2, b=2); the bounds are absolute, 20 standard
// deviations out, so normal(0, 0.1) clamped to them is the same distribution
// in practice.
Module Conv(int64_t in, int64_t out, const ConvShape& s) {
  torch::NoGradGuard no_grad;
  Module m = NewModule("Conv2d");
  AddParameter(m, "weight", torch::empty({out, in, s.kh, s.kw}).normal_(0, kInitStd).clamp_(-2, 2));
  m.define(absl::StrFormat(R"(
def forward(self, x):
    return torch.conv2d(x, self.weight, None, [%d, %d], [%d, %d], [1, 1], 1)
)",
                           s.stride, s.stride, s.ph, s.pw));
  return m;
}

Module BasicConv2d(int64_t in, int64_t out, const ConvShape& s) {
  Module m = NewModule("BasicConv2d");
  m.register_module("conv", Conv(in, out, s));
  m.register_module("bn", BatchNorm2d(out, kBatchNormEps));
  m.define(R"(
def forward(self, x):
    return torch.relu(self.bn.forward(self.conv.forward(x)))
)");
  return m;
}

constexpr ConvShape k1x1{};
constexpr ConvShape k3x3{3, 3};
constexpr ConvShape k3x3Pad{3, 3, 1, 1, 1};
constexpr ConvShape k3x3Stride2{3, 3, 2};
constexpr ConvShape k5x5Pad{5, 5, 1, 2, 2};
constexpr ConvShape k1x7{1, 7, 1, 0, 3};
constexpr ConvShape k7x1{7, 1, 1, 3, 0};
constexpr ConvShape k1x3{1, 3, 1, 0, 1};
constexpr ConvShape k3x1{3, 1, 1, 1, 0};

// 3x3 average pooling, stride 1, padding 1, zeros counted (F.avg_pool2d's default).
constexpr const char* kAvgPool3 = "torch.avg_pool2d(x, [3, 3], [1, 1], [1, 1], False, True, None)";
constexpr const char* kMaxPool3 = "torch.max_pool2d(x, [3, 3], [2, 2], [0, 0], [1, 1], False)";

Module InceptionA(int64_t in, int64_t pool_features) {
  Module m = NewModule("InceptionA");
  m.register_module("branch1x1", BasicConv2d(in, 64, k1x1));
  m.register_module("branch5x5_1", BasicConv2d(in, 48, k1x1));
  m.register_module("branch5x5_2", BasicConv2d(48, 64, k5x5Pad));
  m.register_module("branch3x3dbl_1", BasicConv2d(in, 64, k1x1));
  m.register_module("branch3x3dbl_2", BasicConv2d(64, 96, k3x3Pad));
  m.register_module("branch3x3dbl_3", BasicConv2d(96, 96, k3x3Pad));
  m.register_module("branch_pool", BasicConv2d(in, pool_features, k1x1));
  m.define(absl::StrFormat(R"(
def forward(self, x):
    branch1x1 = self.branch1x1.forward(x)
    branch5x5 = self.branch5x5_2.forward(self.branch5x5_1.forward(x))
    branch3x3dbl = self.branch3x3dbl_1.forward(x)
    branch3x3dbl = self.branch3x3dbl_3.forward(self.branch3x3dbl_2.forward(branch3x3dbl))
    branch_pool = self.branch_pool.forward(%s)
    return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)
)",
                           kAvgPool3));
  return m;
}

Module InceptionB(int64_t in) {
  Module m = NewModule("InceptionB");
  m.register_module("branch3x3", BasicConv2d(in, 384, k3x3Stride2));
  m.register_module("branch3x3dbl_1", BasicConv2d(in, 64, k1x1));
  m.register_module("branch3x3dbl_2", BasicConv2d(64, 96, k3x3Pad));
  m.register_module("branch3x3dbl_3", BasicConv2d(96, 96, k3x3Stride2));
  m.define(absl::StrFormat(R"(
def forward(self, x):
    branch3x3 = self.branch3x3.forward(x)
    branch3x3dbl = self.branch3x3dbl_1.forward(x)
    branch3x3dbl = self.branch3x3dbl_3.forward(self.branch3x3dbl_2.forward(branch3x3dbl))
    branch_pool = %s
    return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)
)",
                           kMaxPool3));
  return m;
}

Module InceptionC(int64_t in, int64_t c7) {
  Module m = NewModule("InceptionC");
  m.register_module("branch1x1", BasicConv2d(in, 192, k1x1));
  m.register_module("branch7x7_1", BasicConv2d(in, c7, k1x1));
  m.register_module("branch7x7_2", BasicConv2d(c7, c7, k1x7));
  m.register_module("branch7x7_3", BasicConv2d(c7, 192, k7x1));
  m.register_module("branch7x7dbl_1", BasicConv2d(in, c7, k1x1));
  m.register_module("branch7x7dbl_2", BasicConv2d(c7, c7, k7x1));
  m.register_module("branch7x7dbl_3", BasicConv2d(c7, c7, k1x7));
  m.register_module("branch7x7dbl_4", BasicConv2d(c7, c7, k7x1));
  m.register_module("branch7x7dbl_5", BasicConv2d(c7, 192, k1x7));
  m.register_module("branch_pool", BasicConv2d(in, 192, k1x1));
  m.define(absl::StrFormat(R"(
def forward(self, x):
    branch1x1 = self.branch1x1.forward(x)
    branch7x7 = self.branch7x7_1.forward(x)
    branch7x7 = self.branch7x7_3.forward(self.branch7x7_2.forward(branch7x7))
    branch7x7dbl = self.branch7x7dbl_1.forward(x)
    branch7x7dbl = self.branch7x7dbl_3.forward(self.branch7x7dbl_2.forward(branch7x7dbl))
    branch7x7dbl = self.branch7x7dbl_5.forward(self.branch7x7dbl_4.forward(branch7x7dbl))
    branch_pool = self.branch_pool.forward(%s)
    return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)
)",
                           kAvgPool3));
  return m;
}

Module InceptionD(int64_t in) {
  Module m = NewModule("InceptionD");
  m.register_module("branch3x3_1", BasicConv2d(in, 192, k1x1));
  m.register_module("branch3x3_2", BasicConv2d(192, 320, k3x3Stride2));
  m.register_module("branch7x7x3_1", BasicConv2d(in, 192, k1x1));
  m.register_module("branch7x7x3_2", BasicConv2d(192, 192, k1x7));
  m.register_module("branch7x7x3_3", BasicConv2d(192, 192, k7x1));
  m.register_module("branch7x7x3_4", BasicConv2d(192, 192, k3x3Stride2));
  m.define(absl::StrFormat(R"(
def forward(self, x):
    branch3x3 = self.branch3x3_2.forward(self.branch3x3_1.forward(x))
    branch7x7x3 = self.branch7x7x3_2.forward(self.branch7x7x3_1.forward(x))
    branch7x7x3 = self.branch7x7x3_4.forward(self.branch7x7x3_3.forward(branch7x7x3))
    branch_pool = %s
    return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)
)",
                           kMaxPool3));
  return m;
}

Module InceptionE(int64_t in) {
  Module m = NewModule("InceptionE");
  m.register_module("branch1x1", BasicConv2d(in, 320, k1x1));
  m.register_module("branch3x3_1", BasicConv2d(in, 384, k1x1));
  m.register_module("branch3x3_2a", BasicConv2d(384, 384, k1x3));
  m.register_module("branch3x3_2b", BasicConv2d(384, 384, k3x1));
  m.register_module("branch3x3dbl_1", BasicConv2d(in, 448, k1x1));
  m.register_module("branch3x3dbl_2", BasicConv2d(448, 384, k3x3Pad));
  m.register_module("branch3x3dbl_3a", BasicConv2d(384, 384, k1x3));
  m.register_module("branch3x3dbl_3b", BasicConv2d(384, 384, k3x1));
  m.register_module("branch_pool", BasicConv2d(in, 192, k1x1));
  m.define(absl::StrFormat(R"(
def forward(self, x):
    branch1x1 = self.branch1x1.forward(x)
    branch3x3 = self.branch3x3_1.forward(x)
    branch3x3 = torch.cat([self.branch3x3_2a.forward(branch3x3), self.branch3x3_2b.forward(branch3x3)], 1)
    branch3x3dbl = self.branch3x3dbl_2.forward(self.branch3x3dbl_1.forward(x))
    branch3x3dbl = torch.cat([self.branch3x3dbl_3a.forward(branch3x3dbl), self.branch3x3dbl_3b.forward(branch3x3dbl)], 1)
    branch_pool = self.branch_pool.forward(%s)
    return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)
)",
                           kAvgPool3));
  return m;
}

}  // namespace

Backbone BuildInceptionV3(const std::string& name) {
  Module m = NewModule("Inception3Backbone");
  m.register_attribute("transform_input", c10::BoolType::get(), false);
  m.register_module("Conv2d_1a_3x3", BasicConv2d(3, 32, k3x3Stride2));
  m.register_module("Conv2d_2a_3x3", BasicConv2d(32, 32, k3x3));
  m.register_module("Conv2d_2b_3x3", BasicConv2d(32, 64, k3x3Pad));
  m.register_module("Conv2d_3b_1x1", BasicConv2d(64, 80, k1x1));
  m.register_module("Conv2d_4a_3x3", BasicConv2d(80, 192, k3x3));
  m.register_module("Mixed_5b", InceptionA(192, /*pool_features=*/32));
  m.register_module("Mixed_5c", InceptionA(256, /*pool_features=*/64));
  m.register_module("Mixed_5d", InceptionA(288, /*pool_features=*/64));
  m.register_module("Mixed_6a", InceptionB(288));
  m.register_module("Mixed_6b", InceptionC(768, /*c7=*/128));
  m.register_module("Mixed_6c", InceptionC(768, /*c7=*/160));
  m.register_module("Mixed_6d", InceptionC(768, /*c7=*/160));
  m.register_module("Mixed_6e", InceptionC(768, /*c7=*/192));
  m.register_module("Mixed_7a", InceptionD(768));
  m.register_module("Mixed_7b", InceptionE(1280));
  m.register_module("Mixed_7c", InceptionE(2048));
  // torchvision's _transform_input, then _forward up to its fc.
  m.define(absl::StrFormat(R"(
def forward(self, x):
    if self.transform_input:
        x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        x = torch.cat([x_ch0, x_ch1, x_ch2], 1)
    x = self.Conv2d_1a_3x3.forward(x)
    x = self.Conv2d_2a_3x3.forward(x)
    x = self.Conv2d_2b_3x3.forward(x)
    x = %s
    x = self.Conv2d_3b_1x1.forward(x)
    x = self.Conv2d_4a_3x3.forward(x)
    x = %s
    x = self.Mixed_5b.forward(x)
    x = self.Mixed_5c.forward(x)
    x = self.Mixed_5d.forward(x)
    x = self.Mixed_6a.forward(x)
    x = self.Mixed_6b.forward(x)
    x = self.Mixed_6c.forward(x)
    x = self.Mixed_6d.forward(x)
    x = self.Mixed_6e.forward(x)
    x = self.Mixed_7a.forward(x)
    x = self.Mixed_7b.forward(x)
    x = self.Mixed_7c.forward(x)
    x = torch.adaptive_avg_pool2d(x, [1, 1])
    x = torch.dropout(x, 0.5, self.training)
    return torch.flatten(x, 1)
)",
                           kMaxPool3, kMaxPool3));
  Backbone b;
  b.name = name;
  b.module = m;
  b.stage_names = {"stem", "mixed5", "mixed6", "mixed7"};
  b.stages = {{"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"},
              {"Mixed_5b", "Mixed_5c", "Mixed_5d"},
              {"Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"},
              {"Mixed_7a", "Mixed_7b", "Mixed_7c"}};
  b.feature_dim = kFeatureDim;
  b.head_prefixes = {"fc.", "AuxLogits."};
  return b;
}

}  // namespace ft::worker
