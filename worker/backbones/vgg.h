#ifndef FT_WORKER_BACKBONES_VGG_H_
#define FT_WORKER_BACKBONES_VGG_H_

#include <string>

#include "worker/backbones/backbone.h"

namespace ft::worker {

// torchvision's VGG without classifier.6: features, the adaptive 7x7 average
// pool, flatten, then classifier.0-5 (Linear, ReLU, Dropout, Linear, ReLU,
// Dropout), giving 4096 features. Dropout (p=0.5) is active in training mode.
// depth is 11, 13, 16 or 19; batch_norm gives the _bn variants.
//
// Stages: block1 to block5 (the convolutions up to and including each max
// pool, as children "features.<i>"), then classifier (classifier.0-5).
Backbone BuildVgg(const std::string& name, int depth, bool batch_norm);

}  // namespace ft::worker

#endif  // FT_WORKER_BACKBONES_VGG_H_
