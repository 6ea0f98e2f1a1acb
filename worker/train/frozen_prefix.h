// The frozen leading stages of a classifier's backbone as an inference
// graph: the stages that a job never trains are run through
// torch::jit::freeze (parameters become constants, BatchNorm is folded into
// the convolutions before it) and optimize_for_inference, so that the
// feature and activation caches, and the frozen part of every uncached
// step, cost less than the module that trains.
#ifndef FT_WORKER_TRAIN_FROZEN_PREFIX_H_
#define FT_WORKER_TRAIN_FROZEN_PREFIX_H_

#include <string>

#include <torch/script.h>

#include "absl/status/statusor.h"

namespace ft::worker {

// forward(x) -> the output of the first `stages` stages of `model`'s
// backbone (its forward_stages(x, 0, stages)), or with `stages` < 0 its
// pooled features (its forward(x)), frozen and optimised for inference on
// a copy: `model` is left as it was. Its outputs stay within 1e-5 relative
// of the unfolded stages (tests/unit/train_test.cc), not bit for bit, so a
// job uses it for every pass over frozen stages, cached or not, alike.
// It is tried on two random images of `image_size` px against the frozen
// graph without optimize_for_inference; where oneDNN's versions of its ops
// refuse that shape, or compute it more than kFrozenPrefixTolerance off
// (some do on some CPUs), it is that unoptimised graph, and `note` (when
// given) says why. INTERNAL naming LibTorch's error when neither runs.
absl::StatusOr<torch::jit::Module> BuildFrozenPrefix(const torch::jit::Module& model, int stages, int image_size,
                                                     std::string* note = nullptr);

inline constexpr double kFrozenPrefixTolerance = 1e-5;

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_FROZEN_PREFIX_H_
