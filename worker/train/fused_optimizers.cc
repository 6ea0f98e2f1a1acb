#include "worker/train/fused_optimizers.h"

#include <cmath>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "worker/train/fused_kernels.h"

namespace ft::worker {
namespace {

// Elements per task: large enough that a thread's share streams, small
// enough that layer4's 2.4 M-element tensors split across every thread.
constexpr int64_t kGrain = int64_t{1} << 16;

using StateMap = std::remove_reference_t<decltype(std::declval<torch::optim::Optimizer&>().state())>;
using StateKeyType = StateMap::key_type;

// LibTorch's key for a parameter's state (optimizer.cpp), which the base
// classes' save and load use too: its TensorImpl's address, as text in
// LibTorch 1.x (c10::guts::to_string: what operator<< writes), the address
// itself in 2.x.
template <typename Key>
Key KeyOf(const torch::Tensor& p) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream text;
    text << p.unsafeGetTensorImpl();
    return text.str();
  } else {
    return p.unsafeGetTensorImpl();
  }
}

StateKeyType StateKey(const torch::Tensor& p) { return KeyOf<StateKeyType>(p); }

bool Fusable(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.layout() == torch::kStrided &&
         t.is_contiguous();
}

template <typename Kernel>
void ParallelOver(int64_t n, const Kernel& kernel) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) { kernel(begin, end - begin); });
}

// Adam and AdamW differ only in where the weight decay goes, and in their
// option and state types, which have the same fields.
template <typename Options, typename State>
bool FusedAdamStep(torch::optim::OptimizerParamGroup& group, StateMap& states, bool decoupled) {
  auto& options = static_cast<Options&>(group.options());
  if (options.amsgrad()) return false;
  for (auto& p : group.params()) {
    if (!p.grad().defined()) continue;
    const torch::Tensor grad = p.grad();
    auto found = states.find(StateKey(p));
    if (found != states.end()) {
      const auto& s = static_cast<State&>(*found->second);
      if (!Fusable(s.exp_avg()) || !Fusable(s.exp_avg_sq())) return false;
    }
    if (!Fusable(p) || !Fusable(grad) || grad.sizes() != p.sizes()) return false;
  }
  const double beta1 = std::get<0>(options.betas());
  const double beta2 = std::get<1>(options.betas());
  for (auto& p : group.params()) {
    if (!p.grad().defined()) continue;
    std::unique_ptr<torch::optim::OptimizerParamState>& slot = states[StateKey(p)];
    if (slot == nullptr) {
      auto state = std::make_unique<State>();
      state->step(0);
      state->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      state->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      slot = std::move(state);
    }
    auto& state = static_cast<State&>(*slot);
    state.step(state.step() + 1);
    const double bias_correction1 = 1 - std::pow(beta1, state.step());
    const double bias_correction2 = 1 - std::pow(beta2, state.step());
    fused::AdamScalars s;
    s.beta1 = static_cast<float>(beta1);
    s.one_minus_beta1 = static_cast<float>(1 - beta1);
    s.beta2 = static_cast<float>(beta2);
    s.one_minus_beta2 = static_cast<float>(1 - beta2);
    s.sqrt_bias_correction2 = static_cast<float>(std::sqrt(bias_correction2));
    s.eps = static_cast<float>(options.eps());
    s.step_size = static_cast<float>(options.lr() / bias_correction1);
    if (options.weight_decay() != 0) {
      if (decoupled) {
        s.decay = static_cast<float>(1 - options.lr() * options.weight_decay());
      } else {
        s.l2 = static_cast<float>(options.weight_decay());
      }
    }
    float* param = p.data_ptr<float>();
    const float* g = p.grad().data_ptr<float>();
    float* m = state.exp_avg().template data_ptr<float>();
    float* v = state.exp_avg_sq().template data_ptr<float>();
    ParallelOver(p.numel(), [&](int64_t at, int64_t n) { fused::AdamStep(param + at, g + at, m + at, v + at, n, s); });
  }
  return true;
}

// The loss of `closure`, computed with autograd on, as LibTorch's steps do.
torch::Tensor LossOf(const torch::optim::Optimizer::LossClosure& closure) {
  if (closure == nullptr) return {};
  at::AutoGradMode enable_grad(true);
  return closure();
}

// LibTorch's own step for one group, on this optimizer's state.
template <typename Reference, typename Options>
void LibTorchStep(torch::optim::OptimizerParamGroup& group, StateMap& states) {
  Reference one({torch::optim::OptimizerParamGroup(group.params())}, static_cast<const Options&>(group.options()));
  std::swap(one.state(), states);
  one.step();
  std::swap(one.state(), states);
}

template <typename Reference, typename Options, typename State>
torch::Tensor AdamFamilyStep(std::vector<torch::optim::OptimizerParamGroup>& groups, StateMap& states,
                             const torch::optim::Optimizer::LossClosure& closure, bool decoupled) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss = LossOf(closure);
  for (auto& group : groups) {
    if (!FusedAdamStep<Options, State>(group, states, decoupled)) LibTorchStep<Reference, Options>(group, states);
  }
  return loss;
}

}  // namespace

torch::Tensor FusedAdam::step(LossClosure closure) {
  return AdamFamilyStep<torch::optim::Adam, torch::optim::AdamOptions, torch::optim::AdamParamState>(
      param_groups_, state_, closure, /*decoupled=*/false);
}

torch::Tensor FusedAdamW::step(LossClosure closure) {
  return AdamFamilyStep<torch::optim::AdamW, torch::optim::AdamWOptions, torch::optim::AdamWParamState>(
      param_groups_, state_, closure, /*decoupled=*/true);
}

torch::Tensor FusedSGD::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss = LossOf(closure);
  for (auto& group : param_groups_) {
    auto& options = static_cast<torch::optim::SGDOptions&>(group.options());
    bool fusable = options.momentum() != 0;
    for (auto& p : group.params()) {
      if (!fusable || !p.grad().defined()) continue;
      auto found = state_.find(StateKey(p));
      fusable = Fusable(p) && Fusable(p.grad()) && p.grad().sizes() == p.sizes() &&
                (found == state_.end() ||
                 Fusable(static_cast<torch::optim::SGDParamState&>(*found->second).momentum_buffer()));
    }
    if (!fusable) {
      LibTorchStep<torch::optim::SGD, torch::optim::SGDOptions>(group, state_);
      continue;
    }
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      std::unique_ptr<torch::optim::OptimizerParamState>& slot = state_[StateKey(p)];
      fused::SgdScalars s;
      s.weight_decay = static_cast<float>(options.weight_decay());
      s.momentum = static_cast<float>(options.momentum());
      s.one_minus_dampening = static_cast<float>(1 - options.dampening());
      s.nesterov = options.nesterov();
      s.minus_lr = static_cast<float>(-1 * options.lr());
      s.first = slot == nullptr;
      if (s.first) {
        auto state = std::make_unique<torch::optim::SGDParamState>();
        state->momentum_buffer(torch::empty_like(p, torch::MemoryFormat::Contiguous));
        slot = std::move(state);
      }
      float* param = p.data_ptr<float>();
      const float* g = p.grad().data_ptr<float>();
      float* buf = static_cast<torch::optim::SGDParamState&>(*slot).momentum_buffer().data_ptr<float>();
      ParallelOver(p.numel(),
                   [&](int64_t at, int64_t n) { fused::SgdMomentumStep(param + at, g + at, buf + at, n, s); });
    }
  }
  return loss;
}

}  // namespace ft::worker
