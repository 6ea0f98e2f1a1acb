// Adam, AdamW and SGD whose step makes one pass over each parameter's
// memory. LibTorch's own step runs Adam as seven tensor operations
// (mul_, add_, mul_, addcmul_, sqrt, div, add_, then addcdiv_), each a full
// pass over tensors that do not fit in cache; for the layers a partly
// frozen job trains (resnet18's layer4: 8.4 M parameters) that was a
// quarter of the step on a CPU (bench/README.md, "Optimizer").
//
// The arithmetic is LibTorch's, in float32, element by element, so the
// results agree with torch::optim::Adam/AdamW/SGD to float rounding (a few
// units in the last place per step; unit.fused_optimizers checks 1e-5
// relative over six steps), not bit for bit: the compiler may fuse a multiply and an
// add. Each element's result depends on nothing but its own inputs, so the
// step is the same whatever the thread count, and a resumed job stays
// bit-identical to an uninterrupted one on the same machine.
//
// The state (step, exp_avg, exp_avg_sq, momentum_buffer) is LibTorch's own
// AdamParamState / AdamWParamState / SGDParamState, saved and loaded by the
// base classes: checkpoints written with either optimizer load in the other.
// Parameters that are not dense contiguous float32 CPU tensors (CUDA,
// half precision), and amsgrad, take LibTorch's own step.
#ifndef FT_WORKER_TRAIN_FUSED_OPTIMIZERS_H_
#define FT_WORKER_TRAIN_FUSED_OPTIMIZERS_H_

#include <vector>

#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

namespace ft::worker {

class FusedAdam : public torch::optim::Adam {
 public:
  using torch::optim::Adam::Adam;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

class FusedSGD : public torch::optim::SGD {
 public:
  using torch::optim::SGD::SGD;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_FUSED_OPTIMIZERS_H_
