#ifndef FT_WORKER_BACKBONES_MOBILENET_H_
#define FT_WORKER_BACKBONES_MOBILENET_H_

#include "worker/backbones/backbone.h"

namespace ft::worker {

// torchvision's MobileNet V2 without classifier.1: features, average pool,
// classifier.0 (Dropout 0.2); 1280 features.
// Stages (children of `features` grouped by output stride):
//   stem   features.0-1    (stride 2)
//   stage1 features.2-3    (stride 4)
//   stage2 features.4-6    (stride 8)
//   stage3 features.7-13   (stride 16)
//   stage4 features.14-17  (stride 32)
//   final  features.18 (1x1 conv to 1280), classifier
Backbone BuildMobileNetV2(const std::string& name);

// torchvision's MobileNet V3 without classifier.3: features, average pool,
// classifier.0 (Linear), classifier.1 (Hardswish), classifier.2 (Dropout
// 0.2); 1280 features for Large, 1024 for Small. BatchNorm eps 1e-3,
// momentum 0.01.
// Stages, Large:                      Small:
//   stem   features.0-1   (stride 2)   features.0
//   stage1 features.2-3   (stride 4)   features.1
//   stage2 features.4-6   (stride 8)   features.2-3
//   stage3 features.7-12  (stride 16)  features.4-8
//   stage4 features.13-15 (stride 32)  features.9-11
//   final  features.16, classifier     features.12, classifier
Backbone BuildMobileNetV3(const std::string& name, bool large);

}  // namespace ft::worker

#endif  // FT_WORKER_BACKBONES_MOBILENET_H_
