// Parity of one backbone with torchvision: loads torchvision's state_dict
// file (written by make_weights.py) into our backbone and compares the
// eval-mode features on a fixed input. Exit 0 when the relative max error is
// at most 1e-4.
//
// usage: parity ARCH WEIGHTS_FILE IO_FILE
#include <iostream>

#include <torch/torch.h>

#include "worker/backbones/backbone.h"
#include "worker/backbones/load_weights.h"
#include "worker/weights/torch_checkpoint.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: parity ARCH WEIGHTS_FILE IO_FILE" << std::endl;
    return 2;
  }
  torch::set_num_threads(2);
  torch::jit::setGraphExecutorOptimize(false);
  const std::string arch = argv[1];
  auto backbone = ft::worker::BuildBackbone(arch);
  if (!backbone.ok()) {
    std::cerr << backbone.status() << std::endl;
    return 1;
  }
  auto loaded = ft::worker::LoadBackboneWeights(*backbone, argv[2], /*pretrained=*/false);
  if (!loaded.ok()) {
    std::cerr << loaded.status() << std::endl;
    return 1;
  }
  auto io = ft::worker::ReadTorchCheckpoint(argv[3]);
  if (!io.ok()) {
    std::cerr << io.status() << std::endl;
    return 1;
  }
  torch::Tensor input, expected;
  for (const auto& t : *io) {
    if (t.name == "input") input = t.tensor;
    if (t.name == "features") expected = t.tensor;
  }
  backbone->module.eval();
  torch::NoGradGuard no_grad;
  torch::Tensor got = backbone->module.forward({input}).toTensor();
  if (!got.sizes().equals(expected.sizes())) {
    std::cerr << arch << ": features " << got.sizes() << " but torchvision gives " << expected.sizes() << std::endl;
    return 1;
  }
  const double err = (got - expected).abs().max().item<double>() / expected.abs().max().item<double>();
  std::cout << arch << ": relative max error " << err << " over " << expected.sizes() << std::endl;
  return err <= 1e-4 ? 0 : 1;
}
