#include "worker/export/torchscript.h"

#include <exception>

#include "absl/strings/str_cat.h"

namespace ft::worker {

absl::Status SaveTorchScript(const torch::jit::Module& model, const std::string& path) {
  try {
    model.save(path);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("cannot save model.pt: ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace ft::worker
