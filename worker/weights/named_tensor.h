// A tensor read from a weight file, with the name it had there.
#ifndef FT_WORKER_WEIGHTS_NAMED_TENSOR_H_
#define FT_WORKER_WEIGHTS_NAMED_TENSOR_H_

#include <torch/types.h>

#include <string>

namespace ft::worker {

// One entry of a state_dict: "layer1.0.conv1.weight" and its values, as an
// owned, contiguous CPU tensor with the dtype the file stored.
struct NamedTensor {
  std::string name;
  torch::Tensor tensor;
};

}  // namespace ft::worker

#endif  // FT_WORKER_WEIGHTS_NAMED_TENSOR_H_
