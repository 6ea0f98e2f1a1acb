#ifndef FT_WORKER_BACKBONES_EFFICIENTNET_H_
#define FT_WORKER_BACKBONES_EFFICIENTNET_H_

#include "worker/backbones/backbone.h"

namespace ft::worker {

// torchvision's EfficientNet B0-B3 (`variant` 0..3) without classifier.1:
// features, average pool, classifier.0 (Dropout 0.2, 0.2, 0.3, 0.3).
// Features: 1280, 1280, 1408, 1536. BatchNorm eps 1e-5, momentum 0.1 (V1
// uses nn.BatchNorm2d's defaults); MBConv blocks have stochastic depth with
// torchvision's linear schedule up to 0.2.
// Stages (children of `features` grouped by output stride):
//   stem   features.0-1 (stride 2)
//   stage1 features.2   (stride 4)
//   stage2 features.3   (stride 8)
//   stage3 features.4-5 (stride 16)
//   stage4 features.6-7 (stride 32)
//   final  features.8 (1x1 conv), classifier
Backbone BuildEfficientNet(const std::string& name, int variant);

}  // namespace ft::worker

#endif  // FT_WORKER_BACKBONES_EFFICIENTNET_H_
