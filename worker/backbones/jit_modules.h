#ifndef FT_WORKER_BACKBONES_JIT_MODULES_H_
#define FT_WORKER_BACKBONES_JIT_MODULES_H_

#include <string>
#include <vector>

#include <torch/script.h>

namespace ft::worker {

// Builders for TorchScript modules made in C++. Models are built as
// torch::jit::Modules from the start, so the module that trains is the module
// that is saved: model.pt loads in Python's torch.jit.load with torchvision's
// parameter names, and no second definition of an architecture exists.
//
// Each builder returns a fresh module with a "training" attribute (so that
// Module::train() and eval() work) and a compiled `forward`.
//
// Sources given to define() use torch.* ops and call submodules as
// self.name.forward(x); numeric submodule names ("0", "1") are reached with
// getattr(self, "0").

// A module of class __torch__.ft.<cls> (mangled per instance) with no methods.
torch::jit::Module NewModule(const std::string& cls);

struct ConvOptions {
  int64_t stride = 1;
  int64_t padding = 0;
  int64_t dilation = 1;
  int64_t groups = 1;
  bool bias = false;
};
// torch.nn.Conv2d, initialised like torchvision's classifiers:
// kaiming_normal_(mode="fan_out", nonlinearity="relu"), bias zero.
torch::jit::Module Conv2d(int64_t in, int64_t out, int64_t kernel, const ConvOptions& options);
// torch.nn.BatchNorm2d (weight 1, bias 0, running stats 0/1).
torch::jit::Module BatchNorm2d(int64_t channels, double eps = 1e-5, double momentum = 0.1);
// torch.nn.Linear with PyTorch's default initialisation.
torch::jit::Module Linear(int64_t in, int64_t out);
// torch.nn.Sequential over modules named "0", "1", ...
torch::jit::Module Sequential(const std::vector<torch::jit::Module>& modules);

// Defines a backbone's forward from its stages, and forward_stages, which
// runs only some of them: stage i runs the statements stage_lines[i] (on
// `x`, in TorchScript, as in a define() source), and `tail` (statements
// too) follows the last stage, e.g. the pooling. Defines
//   forward(self, x) -> Tensor: every stage, then the tail;
//   forward_stages(self, x, start: int, stop: int) -> Tensor: stages
//     start..stop-1, then the tail when stop is the number of stages.
// Both run the same statements in the same order, so forward_stages(x, 0, k)
// then forward_stages(., k, n) computes exactly forward(x), bit for bit:
// the activation cache of a partly frozen backbone stores the first half.
void DefineStagedForward(torch::jit::Module& m, const std::vector<std::vector<std::string>>& stage_lines,
                         const std::vector<std::string>& tail);
inline constexpr char kForwardStages[] = "forward_stages";

// Registers a parameter that requires grad.
void AddParameter(torch::jit::Module& m, const std::string& name, torch::Tensor value);

}  // namespace ft::worker

#endif  // FT_WORKER_BACKBONES_JIT_MODULES_H_
