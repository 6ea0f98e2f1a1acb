#ifndef FT_WORKER_BACKBONES_RESNET_H_
#define FT_WORKER_BACKBONES_RESNET_H_

#include "worker/backbones/backbone.h"

namespace ft::worker {

// torchvision's ResNet (v1.5: stride on the 3x3 conv of bottlenecks) without
// `fc`. Stages: stem (conv1, bn1), layer1, layer2, layer3, layer4.
// depth is 18, 34, 50, 101 or 152; groups/width_per_group give ResNeXt and
// Wide ResNet.
Backbone BuildResNet(const std::string& name, int depth, int64_t groups = 1,
                     int64_t width_per_group = 64);

}  // namespace ft::worker

#endif  // FT_WORKER_BACKBONES_RESNET_H_
