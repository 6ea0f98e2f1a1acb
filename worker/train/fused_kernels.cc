#include "worker/train/fused_kernels.h"

#include <cmath>

namespace ft::worker::fused {

// GCC builds one copy per target and an ifunc that picks at load time; the
// loops are vectorised in each (memory-bound, so the width matters less than
// the single pass).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FT_FUSED_TARGETS __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define FT_FUSED_TARGETS
#endif

FT_FUSED_TARGETS
void AdamStep(float* __restrict param, const float* __restrict grad, float* __restrict exp_avg,
              float* __restrict exp_avg_sq, int64_t n, const AdamScalars& s) {
  const float beta1 = s.beta1, one_minus_beta1 = s.one_minus_beta1, beta2 = s.beta2,
              one_minus_beta2 = s.one_minus_beta2, sqrt_bc2 = s.sqrt_bias_correction2, eps = s.eps,
              minus_step = -s.step_size, l2 = s.l2, decay = s.decay;
  const bool has_l2 = l2 != 0.0f;
  const bool has_decay = decay != 1.0f;
  for (int64_t i = 0; i < n; ++i) {
    float p = param[i];
    if (has_decay) p = p * decay;
    float g = grad[i];
    if (has_l2) g = g + l2 * p;
    const float m = exp_avg[i] * beta1 + one_minus_beta1 * g;
    const float v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    const float denom = std::sqrt(v) / sqrt_bc2 + eps;
    param[i] = p + minus_step * (m / denom);
  }
}

FT_FUSED_TARGETS
void SgdMomentumStep(float* __restrict param, const float* __restrict grad, float* __restrict momentum_buffer,
                     int64_t n, const SgdScalars& s) {
  const float wd = s.weight_decay, momentum = s.momentum, keep = s.one_minus_dampening, minus_lr = s.minus_lr;
  const bool has_wd = wd != 0.0f;
  const bool nesterov = s.nesterov, first = s.first;
  for (int64_t i = 0; i < n; ++i) {
    const float p = param[i];
    float d = grad[i];
    if (has_wd) d = d + wd * p;
    const float buf = first ? d : momentum_buffer[i] * momentum + keep * d;
    momentum_buffer[i] = buf;
    d = nesterov ? d + momentum * buf : buf;
    param[i] = p + minus_lr * d;
  }
}

}  // namespace ft::worker::fused
