#ifndef FT_WORKER_BACKBONES_BLOCKS_H_
#define FT_WORKER_BACKBONES_BLOCKS_H_

#include <torch/script.h>

#include <string>
#include <vector>

#include "worker/backbones/jit_modules.h"

namespace ft::worker {

// Building blocks shared by the MobileNet, EfficientNet and ConvNeXt
// families, as TorchScript modules with torchvision's class layout and
// parameter names. Modules without parameters (activations, Dropout,
// Permute) are still real children, so a saved model reads like
// torchvision's and indices in Sequentials match its state-dict keys.

// torchvision.models._utils._make_divisible: `v` rounded to the nearest
// multiple of `divisor`, at least `min_value` (default: divisor), and never
// more than 10% below v.
int64_t MakeDivisible(double v, int64_t divisor = 8, int64_t min_value = 0);

// An activation module: "ReLU", "ReLU6", "Hardswish", "Hardsigmoid", "SiLU",
// "Sigmoid" or "GELU" (exact erf form, as nn.GELU()).
torch::jit::Module Activation(const std::string& kind);

// torch.nn.Dropout(p): active only in training mode.
torch::jit::Module Dropout(double p);

// torchvision.ops.StochasticDepth(p, mode="row"): in training mode each
// sample's branch is zeroed with probability p and survivors are scaled by
// 1/(1-p); identity in eval mode and when p is 0.
torch::jit::Module StochasticDepth(double p);

// torch.nn.Flatten(1).
torch::jit::Module Flatten();

// torchvision.ops.misc.Permute.
torch::jit::Module Permute(const std::vector<int64_t>& dims);

// torch.nn.LayerNorm(channels, eps) over the last dimension, weight 1, bias 0.
torch::jit::Module LayerNorm(int64_t channels, double eps);

// torchvision's convnext.LayerNorm2d: LayerNorm over the channels of an NCHW
// tensor (permuted to NHWC and back). Parameters as LayerNorm.
torch::jit::Module LayerNorm2d(int64_t channels, double eps);

struct BatchNormOptions {
  double eps = 1e-5;
  double momentum = 0.1;
};

// torchvision.ops.misc.Conv2dNormActivation with BatchNorm2d and no conv
// bias: children "0" (Conv2d, padding (kernel-1)/2), "1"
// (BatchNorm2d) and, unless `activation` is empty, "2".
torch::jit::Module Conv2dNormActivation(int64_t in, int64_t out, int64_t kernel, int64_t stride,
                                        int64_t groups, const BatchNormOptions& bn,
                                        const std::string& activation);

// torchvision.ops.misc.SqueezeExcitation: fc1 and fc2 are 1x1 convs with
// bias (kaiming_normal fan_out, bias zero, as the MobileNet V3 and
// EfficientNet classes initialise them); output = scale_activation(fc2(
// activation(fc1(avgpool(x))))) * x.
torch::jit::Module SqueezeExcitation(int64_t channels, int64_t squeeze_channels,
                                     const std::string& activation, const std::string& scale_activation);

// Stage lists name sub-modules by path: {"features.2", "features.3"} for
// ChildPaths("features", 2, 3).
// torchvision's MobileNet/EfficientNet layout: `features`, adaptive average
// pooling to 1x1, flatten, then `classifier` (everything before the head).
// Its forward comes from DefineStagedFeatures, once the stages are known.
torch::jit::Module FeaturesPoolClassifier(const std::string& cls, const std::vector<torch::jit::Module>& features,
                                          const std::vector<torch::jit::Module>& classifier);

// The forward (and forward_stages, see DefineStagedForward) of a module laid
// out as `features` (a Sequential), `pool` (statements on x), then
// `classifier`, with `stages` that name "features.<i>" children in order and
// "classifier" (in the last stage, or else after every stage): each child
// runs on its own, the pool right before the classifier. The ops, and so
// the results, are those of features -> pool -> classifier.
void DefineStagedFeatures(torch::jit::Module& m, const std::vector<std::vector<std::string>>& stages,
                          const std::vector<std::string>& pool);

std::vector<std::string> ChildPaths(const std::string& parent, int first, int last);

// In-place re-initialisations of a module's "weight" (and "bias" to zero when
// it has one), for families whose init differs from jit_modules' defaults.
void InitNormal(torch::jit::Module& m, double std);
void InitUniform(torch::jit::Module& m, double bound);
// nn.init.trunc_normal_(std=std) with its default absolute bounds [-2, 2].
void InitTruncNormal(torch::jit::Module& m, double std);

}  // namespace ft::worker

#endif  // FT_WORKER_BACKBONES_BLOCKS_H_
