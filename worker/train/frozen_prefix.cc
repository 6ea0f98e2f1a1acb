#include "worker/train/frozen_prefix.h"

#include <exception>
#include <string>

#include <torch/csrc/jit/passes/inliner.h>

#include "absl/strings/str_cat.h"
#include "worker/backbones/jit_modules.h"

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

absl::StatusOr<torch::jit::Module> BuildFrozenPrefix(const torch::jit::Module& model, int stages, int image_size) {
  std::string why;
  for (const bool optimize : {true, false}) {
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
      torch::jit::Module frozen = torch::jit::freeze(wrapper);
      if (optimize) frozen = torch::jit::optimize_for_inference(frozen);
      // oneDNN's versions of some ops take fewer shapes (adaptive pooling
      // to 7x7 from 2x2, for one): try the job's size before trusting it.
      torch::NoGradGuard no_grad;
      const torch::Device device = (*model.attr("head").toModule().parameters().begin()).device();
      frozen.forward({torch::zeros({2, 3, image_size, image_size}, torch::TensorOptions().device(device))});
      return frozen;
    } catch (const c10::Error& e) {
      why = e.what_without_backtrace();
    } catch (const std::exception& e) {  // the interpreter's errors are not c10::Errors
      why = e.what();
    }
  }
  return absl::InternalError(absl::StrCat("cannot freeze the frozen stages for inference: ", why));
}

}  // namespace ft::worker
