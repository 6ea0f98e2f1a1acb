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
#include "absl/status/statusor.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: parity ARCH WEIGHTS_FILE IO_FILE" << std::endl;
    return 2;
  }
  torch::set_num_threads(2);
  torch::jit::setGraphExecutorOptimize(false);
  const std::string arch = argv[1];
  const std::string weights = argv[2];
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
  // The same weights through each way in: torch.save file, safetensors, TorchScript backbone.
  const std::string stem = weights.substr(0, weights.size() - 4);  // drop ".pth"
  int failures = 0;
  for (const std::string source : {"pth", "safetensors", "torchscript"}) {
    absl::StatusOr<ft::worker::Backbone> backbone;
    if (source == "torchscript") {
      backbone = ft::worker::LoadTorchScriptBackbone(stem + ".ts.pt", static_cast<int>(input.size(2)));
    } else {
      backbone = ft::worker::BuildBackbone(arch);
      if (backbone.ok()) {
        auto loaded = ft::worker::LoadBackboneWeights(*backbone, source == "pth" ? weights : stem + ".safetensors",
                                                      /*pretrained=*/false);
        if (!loaded.ok()) backbone = loaded.status();
      }
    }
    if (!backbone.ok()) {
      std::cerr << arch << " (" << source << "): " << backbone.status() << std::endl;
      ++failures;
      continue;
    }
    backbone->module.eval();
    torch::NoGradGuard no_grad;
    torch::Tensor got = backbone->module.forward({input}).toTensor();
    if (!got.sizes().equals(expected.sizes())) {
      std::cerr << arch << " (" << source << "): features " << got.sizes() << " but torchvision gives "
                << expected.sizes() << std::endl;
      ++failures;
      continue;
    }
    const double err = (got - expected).abs().max().item<double>() / expected.abs().max().item<double>();
    std::cout << arch << " (" << source << "): relative max error " << err << " over " << expected.sizes()
              << std::endl;
    if (!(err <= 1e-4)) ++failures;
  }
  return failures == 0 ? 0 : 1;
}
