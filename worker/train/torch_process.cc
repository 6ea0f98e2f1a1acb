#include "worker/train/torch_process.h"

#include <torch/script.h>
#include <torch/torch.h>

namespace ft::worker {

void InitTorchProcess(int threads) {
  torch::set_num_threads(threads);
  torch::jit::setGraphExecutorOptimize(false);
}

}  // namespace ft::worker
