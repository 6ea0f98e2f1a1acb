#ifndef FT_WORKER_BACKBONES_DENSENET_H_
#define FT_WORKER_BACKBONES_DENSENET_H_

#include <string>
#include <vector>

#include "worker/backbones/backbone.h"

namespace ft::worker {

// torchvision's DenseNet-BC without `classifier`: features (conv0, norm0,
// pool0, denseblock1, transition1, ..., denseblock4, norm5), then ReLU,
// adaptive average pooling and flatten. growth_rate 32 and 64 initial
// features as torchvision's densenet121/169/201; block_config gives the
// layers per dense block, e.g. {6, 12, 24, 16} for densenet121.
//
// Stages: stem (features.conv0, norm0), block1 to block3 (each dense block
// with the transition after it), block4 (denseblock4 and norm5).
Backbone BuildDenseNet(const std::string& name, const std::vector<int64_t>& block_config,
                       int64_t growth_rate = 32, int64_t num_init_features = 64);

// Maps a key of torchvision's older DenseNet files ("...denselayer1.norm.1.weight")
// to the current name ("...denselayer1.norm1.weight"), as torchvision does
// when it loads them; other keys are returned unchanged.
std::string RemapDensenetKey(const std::string& key);

}  // namespace ft::worker

#endif  // FT_WORKER_BACKBONES_DENSENET_H_
