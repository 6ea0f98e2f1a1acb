// The element loops of the fused optimizers (fused_optimizers.h), on plain
// float arrays: compiled apart, without LibTorch's headers, once for each
// of AVX-512, AVX2 and baseline x86-64 (the CPU picks at load time), with
// sqrt free to vectorise (-fno-math-errno).
//
// Each function updates the n elements it is given and nothing else, so
// disjoint ranges may run on different threads at once.
#ifndef FT_WORKER_TRAIN_FUSED_KERNELS_H_
#define FT_WORKER_TRAIN_FUSED_KERNELS_H_

#include <cstdint>

namespace ft::worker::fused {

// One Adam/AdamW step, with LibTorch's float32 arithmetic:
//   p    *= decay                                  (AdamW; decay = 1 - lr * wd)
//   g     = grad + l2 * p                          (Adam's weight decay)
//   m     = m * beta1 + (1 - beta1) * g
//   v     = v * beta2 + (1 - beta2) * g * g
//   p    += -step_size * (m / (sqrt(v) / sqrt_bias_correction2 + eps))
struct AdamScalars {
  float beta1 = 0.9f;
  float one_minus_beta1 = 0.1f;
  float beta2 = 0.999f;
  float one_minus_beta2 = 0.001f;
  float sqrt_bias_correction2 = 1.0f;
  float eps = 1e-8f;
  float step_size = 1e-3f;
  // 0 for none.
  float l2 = 0.0f;
  // 1 for none.
  float decay = 1.0f;
};
void AdamStep(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n, const AdamScalars& s);

// One SGD step with momentum, LibTorch's order:
//   d    = grad + weight_decay * p
//   buf  = first ? d : buf * momentum + (1 - dampening) * d
//   d    = nesterov ? d + momentum * buf : buf
//   p   += -lr * d
struct SgdScalars {
  float weight_decay = 0.0f;
  float momentum = 0.0f;
  float one_minus_dampening = 1.0f;
  bool nesterov = false;
  bool first = false;
  float minus_lr = -0.1f;
};
void SgdMomentumStep(float* param, const float* grad, float* momentum_buffer, int64_t n, const SgdScalars& s);

}  // namespace ft::worker::fused

#endif  // FT_WORKER_TRAIN_FUSED_KERNELS_H_
