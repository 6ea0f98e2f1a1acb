#ifndef FT_WORKER_BACKBONES_LOAD_WEIGHTS_H_
#define FT_WORKER_BACKBONES_LOAD_WEIGHTS_H_

#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/status.h"
#include "worker/weights/torch_checkpoint.h"

namespace ft::worker {

// Copies `tensors` into the module's parameters and buffers by name,
// strictly: every parameter and buffer must be given, with its shape, and
// every tensor must name one, except tensors under `skip_prefixes` (the
// replaced head, auxiliary classifiers). The first few offenders are named.
// FAILED_PRECONDITION on any mismatch; the module is untouched then.
absl::Status ApplyStateDict(torch::jit::Module& module, const std::vector<NamedTensor>& tensors,
                            const std::vector<std::string>& skip_prefixes,
                            const std::string& source);

struct Backbone;

// Loads a torchvision weights file into `backbone`: reads it, renames
// old-style DenseNet keys ("norm.1" -> "norm1") as torchvision does, and
// applies it strictly. `pretrained` files get the input transform
// torchvision switches on for them (Inception v3's transform_input).
// Returns the number of tensors read.
absl::StatusOr<size_t> LoadBackboneWeights(Backbone& backbone, const std::string& path, bool pretrained);

// Reads a weights file by its format (.safetensors, else a torch.save zip).
absl::StatusOr<std::vector<NamedTensor>> ReadWeightsFile(const std::string& path);

}  // namespace ft::worker

#endif  // FT_WORKER_BACKBONES_LOAD_WEIGHTS_H_
