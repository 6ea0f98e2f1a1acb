#include "worker/backbones/jit_modules.h"

#include <cmath>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ft::worker {
namespace {

std::shared_ptr<torch::jit::CompilationUnit> SharedUnit() {
  static auto* unit = new std::shared_ptr<torch::jit::CompilationUnit>(
      std::make_shared<torch::jit::CompilationUnit>());
  return *unit;
}

}  // namespace

torch::jit::Module NewModule(const std::string& cls) {
  torch::jit::Module m(absl::StrCat("__torch__.ft.", cls), SharedUnit(), /*shouldMangle=*/true);
  m.register_attribute("training", c10::BoolType::get(), true);
  return m;
}

void DefineStagedForward(torch::jit::Module& m, const std::vector<std::vector<std::string>>& stage_lines,
                         const std::vector<std::string>& tail) {
  std::string forward = "def forward(self, x):\n";
  std::string staged = absl::StrCat("def ", kForwardStages, "(self, x, start: int, stop: int):\n");
  const size_t n = stage_lines.size();
  for (size_t i = 0; i < n; ++i) {
    absl::StrAppend(&staged, "    if start <= ", i, " and ", i, " < stop:\n");
    for (const auto& line : stage_lines[i]) {
      absl::StrAppend(&forward, "    ", line, "\n");
      absl::StrAppend(&staged, "        ", line, "\n");
    }
    if (stage_lines[i].empty()) absl::StrAppend(&staged, "        pass\n");
  }
  absl::StrAppend(&staged, "    if stop >= ", n, ":\n");
  for (const auto& line : tail) {
    absl::StrAppend(&forward, "    ", line, "\n");
    absl::StrAppend(&staged, "        ", line, "\n");
  }
  if (tail.empty()) absl::StrAppend(&staged, "        pass\n");
  absl::StrAppend(&forward, "    return x\n");
  absl::StrAppend(&staged, "    return x\n");
  m.define(forward + staged);
}

void AddParameter(torch::jit::Module& m, const std::string& name, torch::Tensor value) {
  m.register_parameter(name, value.detach().requires_grad_(true), /*is_buffer=*/false);
}

torch::jit::Module Conv2d(int64_t in, int64_t out, int64_t kernel, const ConvOptions& o) {
  torch::NoGradGuard no_grad;
  auto m = NewModule("Conv2d");
  auto w = torch::empty({out, in / o.groups, kernel, kernel});
  // kaiming_normal_(mode="fan_out", nonlinearity="relu")
  const double fan_out = static_cast<double>(out) * kernel * kernel / o.groups;
  w.normal_(0, std::sqrt(2.0 / fan_out));
  AddParameter(m, "weight", w);
  if (o.bias) AddParameter(m, "bias", torch::zeros({out}));
  m.define(absl::StrFormat(R"(
def forward(self, x):
    return torch.conv2d(x, self.weight, %s, [%d, %d], [%d, %d], [%d, %d], %d)
)",
                           o.bias ? "self.bias" : "None", o.stride, o.stride, o.padding, o.padding,
                           o.dilation, o.dilation, o.groups));
  return m;
}

torch::jit::Module BatchNorm2d(int64_t channels, double eps, double momentum) {
  auto m = NewModule("BatchNorm2d");
  AddParameter(m, "weight", torch::ones({channels}));
  AddParameter(m, "bias", torch::zeros({channels}));
  m.register_buffer("running_mean", torch::zeros({channels}));
  m.register_buffer("running_var", torch::ones({channels}));
  m.register_buffer("num_batches_tracked", torch::zeros({}, torch::kLong));
  // In eval mode (also for frozen stages in a training model) the running
  // statistics are only read, never updated.
  m.define(absl::StrFormat(R"(
def forward(self, x):
    if self.training:
        self.num_batches_tracked.add_(1)
    return torch.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var, self.training, %.17g, %.17g, True)
)",
                           momentum, eps));
  return m;
}

torch::jit::Module Linear(int64_t in, int64_t out) {
  torch::NoGradGuard no_grad;
  auto m = NewModule("Linear");
  // PyTorch's default: kaiming_uniform_(a=sqrt(5)) for the weight, which is
  // U(-1/sqrt(in), 1/sqrt(in)), and the same bound for the bias.
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  AddParameter(m, "weight", torch::empty({out, in}).uniform_(-bound, bound));
  AddParameter(m, "bias", torch::empty({out}).uniform_(-bound, bound));
  m.define(R"(
def forward(self, x):
    return torch.linear(x, self.weight, self.bias)
)");
  return m;
}

torch::jit::Module Sequential(const std::vector<torch::jit::Module>& modules) {
  auto m = NewModule("Sequential");
  std::string body = "def forward(self, x):\n";
  for (size_t i = 0; i < modules.size(); ++i) {
    m.register_module(absl::StrCat(i), modules[i]);
    absl::StrAppend(&body, "    x = getattr(self, \"", i, "\").forward(x)\n");
  }
  absl::StrAppend(&body, "    return x\n");
  m.define(body);
  return m;
}

}  // namespace ft::worker
