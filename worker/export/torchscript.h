// model.pt: the trained classifier as TorchScript, which Python's
// torch.jit.load reads without this project.
#ifndef FT_WORKER_EXPORT_TORCHSCRIPT_H_
#define FT_WORKER_EXPORT_TORCHSCRIPT_H_

#include <string>

#include <torch/script.h>

#include "absl/status/status.h"

namespace ft::worker {

// Saves `model` to `path`. INTERNAL "cannot save model.pt: ..." with
// LibTorch's reason when it cannot; never throws.
absl::Status SaveTorchScript(const torch::jit::Module& model, const std::string& path);

}  // namespace ft::worker

#endif  // FT_WORKER_EXPORT_TORCHSCRIPT_H_
