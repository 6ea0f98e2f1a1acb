#ifndef FT_WORKER_BACKBONES_CONVNEXT_H_
#define FT_WORKER_BACKBONES_CONVNEXT_H_

#include "worker/backbones/backbone.h"

namespace ft::worker {

// torchvision's ConvNeXt Tiny (`small` false) or Small without
// classifier.2: features, average pool, classifier.0 (LayerNorm2d, eps
// 1e-6), classifier.1 (Flatten); 768 features. Blocks have stochastic depth
// with torchvision's linear schedule up to 0.1 (Tiny) or 0.4 (Small).
// Stages:
//   stem   features.0    (4x4 patchify conv + LayerNorm2d, stride 4)
//   stage1 features.1    (stride 4)
//   stage2 features.2-3  (downsample + blocks, stride 8)
//   stage3 features.4-5  (stride 16)
//   stage4 features.6-7  (stride 32)
//   final  classifier    (the LayerNorm2d before the head)
Backbone BuildConvNeXt(const std::string& name, bool small);

}  // namespace ft::worker

#endif  // FT_WORKER_BACKBONES_CONVNEXT_H_
