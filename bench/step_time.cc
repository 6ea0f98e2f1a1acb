// Forward + backward + Adam step time of finetuned's TorchScript-built
// classifiers (backbone + new Linear head), as the worker trains them:
// graph executor optimisation off, everything trainable (freeze depth 0),
// cross-entropy on random inputs, the worker's fused Adam (--optimizer
// libtorch: LibTorch's own). bench/step_time.py is the torchvision twin.
//
//   ft_bench_step_time --arch resnet18,resnet50 --batch 16 --size 64 --threads 2 [--optimizer fused|libtorch]
//
// Prints one JSON line per architecture:
//   {"side":"finetuned","arch":...,"ms_median":...,"ms_min":...,"iters":...}
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <torch/script.h>
#include <torch/torch.h>

#include "absl/strings/str_split.h"
#include "worker/backbones/backbone.h"
#include "worker/train/fused_optimizers.h"
#include "common/catalog/catalog.h"

namespace {

struct Args {
  std::vector<std::string> archs;
  int batch = 16;
  int size = 64;
  int inception_size = 80;
  int threads = 2;
  int warmup = 3;
  int iters = 10;
  int classes = 10;
  std::string optimizer = "fused";
};

int Usage() {
  std::cerr << "ft_bench_step_time [--arch a,b|all] [--batch 16] [--size 64] [--inception-size 80]\n"
               "                   [--threads 2] [--warmup 3] [--iters 10] [--classes 10] [--optimizer fused|libtorch]\n";
  return 2;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  std::string arch = "resnet18";
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    std::string v;
    if (auto eq = k.find('='); eq != std::string::npos) {
      v = k.substr(eq + 1);
      k = k.substr(0, eq);
    } else if (i + 1 < argc) {
      v = argv[++i];
    } else {
      return Usage();
    }
    if (k == "--arch") arch = v;
    else if (k == "--batch") a.batch = std::atoi(v.c_str());
    else if (k == "--size") a.size = std::atoi(v.c_str());
    else if (k == "--inception-size") a.inception_size = std::atoi(v.c_str());
    else if (k == "--threads") a.threads = std::atoi(v.c_str());
    else if (k == "--warmup") a.warmup = std::atoi(v.c_str());
    else if (k == "--iters") a.iters = std::atoi(v.c_str());
    else if (k == "--classes") a.classes = std::atoi(v.c_str());
    else if (k == "--optimizer" && (v == "fused" || v == "libtorch")) a.optimizer = v;
    else return Usage();
  }
  if (arch == "all") {
    for (const auto& b : ft::catalog::Backbones()) {
      if (!ft::catalog::IsTorchScriptBackbone(b.name)) a.archs.push_back(b.name);
    }
  } else {
    a.archs = absl::StrSplit(arch, ',', absl::SkipEmpty());
  }

  // As the worker does (worker/main.cc, worker/train/trainer.cc).
  torch::set_num_threads(a.threads);
  torch::jit::setGraphExecutorOptimize(false);

  std::vector<std::string> class_names;
  for (int c = 0; c < a.classes; ++c) class_names.push_back(std::to_string(c));

  for (const auto& name : a.archs) {
    torch::manual_seed(0);
    auto backbone = ft::worker::BuildBackbone(name);
    if (!backbone.ok()) {
      std::cerr << backbone.status() << "\n";
      return 1;
    }
    torch::jit::Module model = ft::worker::BuildClassifier(backbone->module, backbone->feature_dim, class_names);
    ft::worker::ApplyFreeze(model, *backbone, 0);
    std::vector<torch::Tensor> params;
    for (const auto& p : model.parameters()) {
      if (p.requires_grad()) params.push_back(p);
    }
    std::unique_ptr<torch::optim::Optimizer> optimizer;
    if (a.optimizer == "fused") {
      optimizer = std::make_unique<ft::worker::FusedAdam>(params, torch::optim::AdamOptions(1e-3));
    } else {
      optimizer = std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(1e-3));
    }
    const int s = name == "inception_v3" ? a.inception_size : a.size;
    auto x = torch::randn({a.batch, 3, s, s});
    auto y = torch::randint(0, a.classes, {a.batch}, torch::kInt64);
    std::vector<double> ms;
    for (int it = 0; it < a.warmup + a.iters; ++it) {
      const auto t0 = std::chrono::steady_clock::now();
      auto logits = model.forward({x}).toTensor();
      auto loss = torch::nn::functional::cross_entropy(logits, y);
      optimizer->zero_grad();
      loss.backward();
      optimizer->step();
      (void)loss.item<float>();
      const double dt =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (it >= a.warmup) ms.push_back(dt);
    }
    std::printf(
        "{\"side\":\"finetuned\",\"arch\":\"%s\",\"batch\":%d,\"size\":%d,\"threads\":%d,"
        "\"optimizer\":\"%s\",\"ms_median\":%.2f,\"ms_min\":%.2f,\"iters\":%d}\n",
        name.c_str(), a.batch, s, a.threads, a.optimizer.c_str(), Median(ms), *std::min_element(ms.begin(), ms.end()),
        a.iters);
    std::fflush(stdout);
  }
  return 0;
}
