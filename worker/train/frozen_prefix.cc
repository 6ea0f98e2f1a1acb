#include "worker/train/frozen_prefix.h"

#include <algorithm>
#include <exception>
#include <limits>
#include <string>

#include <torch/csrc/jit/passes/inliner.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/backbones/jit_modules.h"
#include "worker/train/first_line.h"

namespace ft::worker {
namespace {

bool HasCalls(const torch::jit::Block& block) {
  for (const torch::jit::Node* node : block.nodes()) {
    if (node->kind() == c10::prim::CallMethod || node->kind() == c10::prim::CallFunction) return true;
    for (const torch::jit::Block* sub : node->blocks()) {
      if (HasCalls(*sub)) return true;
    }
  }
  return false;
}

}  // namespace

absl::StatusOr<torch::jit::Module> BuildFrozenPrefix(const torch::jit::Module& model, int stages, int image_size,
                                                     std::string* note) {
  torch::NoGradGuard no_grad;
  torch::jit::Module frozen, unoptimised;
  torch::Tensor probe, reference;
  try {
    torch::jit::Module wrapper = NewModule("FrozenPrefix");
    // Freezing rewrites the class types of what it freezes (it strips
    // their methods), so the copy gets types of its own (clone), and
    // tensors of its own (deepcopy): the model that trains keeps both.
    wrapper.register_module("backbone", model.attr("backbone").toModule().clone().deepcopy());
    wrapper.define(stages < 0 ? std::string("def forward(self, x):\n    return self.backbone.forward(x)\n")
                              : absl::StrCat("def forward(self, x):\n    return self.backbone.", kForwardStages,
                                             "(x, 0, ", stages, ")\n"));
    wrapper.eval();
    // freeze() inlines calls only in the graph executor's optimising
    // mode, which the worker turns off (InitTorchProcess); inline them
    // here. One Inline pass inlines one level of calls (a Sequential's,
    // then its blocks', ...).
    auto graph = wrapper.get_method("forward").graph();
    for (int level = 0; level < 64 && HasCalls(*graph->block()); ++level) torch::jit::Inline(*graph);
    frozen = torch::jit::freeze(wrapper);
    // The frozen graph without optimize_for_inference, on a copy (a forward
    // before optimize_for_inference changes what that makes of the graph:
    // it skips some of oneDNN's rewrites): what the optimised one must
    // match, on a probe of two random images (their own generator: the
    // job's random streams are left alone), and the fallback.
    unoptimised = frozen.clone();
    const torch::Device device = (*model.attr("head").toModule().parameters().begin()).device();
    auto generator = at::detail::createCPUGenerator(0x5EED);
    probe = torch::randn({2, 3, image_size, image_size}, generator).to(device);
    reference = unoptimised.forward({probe}).toTensor();
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("cannot freeze the frozen stages for inference: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {  // the interpreter's errors are not c10::Errors
    return absl::InternalError(absl::StrCat("cannot freeze the frozen stages for inference: ", e.what()));
  }
  std::string why;
  try {
    frozen = torch::jit::optimize_for_inference(frozen);
    // oneDNN's versions of some ops take fewer shapes (adaptive pooling
    // to 7x7 from 2x2, for one), and on some CPUs compute some wrongly
    // (LibTorch 1.13 on AVX-512: mobilenet_v3's squeeze-and-excitation
    // blocks, off by 30%): try the job's size, and the values, before
    // trusting it.
    const torch::Tensor got = frozen.forward({probe}).toTensor();
    const double scale = std::max(reference.abs().max().item<double>(), 1e-12);
    const double rel = got.sizes() == reference.sizes() ? (got - reference).abs().max().item<double>() / scale
                                                        : std::numeric_limits<double>::infinity();
    if (rel <= kFrozenPrefixTolerance) return frozen;
    why = absl::StrFormat("optimize_for_inference's graph is off by %.3g relative on this CPU", rel);
  } catch (const c10::Error& e) {
    why = e.what_without_backtrace();
  } catch (const std::exception& e) {
    why = e.what();
  }
  if (note != nullptr) *note = FirstLine(why);
  return unoptimised;
}

}  // namespace ft::worker
