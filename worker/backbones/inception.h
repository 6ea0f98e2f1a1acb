#ifndef FT_WORKER_BACKBONES_INCEPTION_H_
#define FT_WORKER_BACKBONES_INCEPTION_H_

#include <string>

#include "worker/backbones/backbone.h"

namespace ft::worker {

// torchvision's Inception v3 without `fc` and without the auxiliary
// classifier (torchvision files' AuxLogits.* are skipped): the stem,
// Mixed_5b to Mixed_7c, adaptive average pooling, dropout (p=0.5, active in
// training mode) and flatten, giving 2048 features. Inputs must be at least
// 75x75 pixels.
//
// The module has a bool attribute `transform_input`, false when built: set it
// (module.setattr("transform_input", true)) for torchvision's pretrained
// weights, which expect torchvision's re-normalisation of ImageNet-normalised
// input, as inception_v3(weights=...) does.
//
// Stages: stem (Conv2d_1a_3x3 to Conv2d_4a_3x3 with the two max pools),
// mixed5 (Mixed_5b-5d, 35x35 at 299 px), mixed6 (Mixed_6a-6e, 17x17),
// mixed7 (Mixed_7a-7c, 8x8).
Backbone BuildInceptionV3(const std::string& name);

}  // namespace ft::worker

#endif  // FT_WORKER_BACKBONES_INCEPTION_H_
