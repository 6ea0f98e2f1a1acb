// finetuned's input pipeline alone: scan an ImageFolder, decode every image
// once (DecodeSamples, as the worker does before training), then run
// `epochs` passes of the BatchLoader with the training transform
// (RandomResizedCrop + flip + normalise), consuming batches as fast as they
// come. bench/loader_bench.py is the torchvision DataLoader twin.
//
//   ft_bench_loader --dataset DIR --threads 2 --epochs 3 --batch 32 --size 64
//
// Prints one JSON line.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "common/datasets/layout.h"
#include "worker/data/images.h"
#include "worker/data/loader.h"

namespace {
using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
}  // namespace

int main(int argc, char** argv) {
  std::string dataset;
  int threads = 2, epochs = 3, batch = 32, size = 64;
  std::string augment = "standard";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--dataset") dataset = v;
    else if (k == "--threads") threads = std::atoi(v.c_str());
    else if (k == "--epochs") epochs = std::atoi(v.c_str());
    else if (k == "--batch") batch = std::atoi(v.c_str());
    else if (k == "--size") size = std::atoi(v.c_str());
    else if (k == "--augment") augment = v;
    else {
      std::cerr << "unknown flag " << k << "\n";
      return 2;
    }
  }
  if (dataset.empty()) {
    std::cerr << "ft_bench_loader --dataset DIR [--threads 2] [--epochs 3] [--batch 32] [--size 64]"
                 " [--augment standard|light|none]\n";
    return 2;
  }
  torch::set_num_threads(threads);
  const auto t_scan = Clock::now();
  auto layout = ft::datasets::ScanDataset(dataset, {});
  if (!layout.ok()) {
    std::cerr << layout.status() << "\n";
    return 1;
  }
  const double scan_s = Since(t_scan);

  // As worker/train/trainer.cc: decode with all threads, shrink to the eval resize size.
  ft::worker::DecodeOptions decode;
  decode.max_short_side = ft::worker::EvalResizeSize(size);
  decode.threads = threads;
  const auto t_decode = Clock::now();
  auto set = ft::worker::DecodeSamples(layout->train, decode);
  if (!set.ok()) {
    std::cerr << set.status() << "\n";
    return 1;
  }
  const double decode_s = Since(t_decode);

  ft::worker::LoaderOptions lo;
  lo.batch_size = batch;
  lo.transform.image_size = size;
  lo.transform.train = augment != "none";
  if (augment == "light") lo.transform.min_scale = 0.5f;
  lo.threads = threads;
  std::mt19937_64 rng(0);
  std::vector<double> epoch_s;
  double checksum = 0;
  const int64_t n = static_cast<int64_t>(set->images.size());
  for (int e = 1; e <= epochs; ++e) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    lo.seed = static_cast<uint64_t>(e);
    const auto t0 = Clock::now();
    ft::worker::BatchLoader loader(&*set, order, lo);
    while (auto b = loader.Next()) checksum += b->images[0][0][0][0].item<float>();
    epoch_s.push_back(Since(t0));
  }
  std::sort(epoch_s.begin(), epoch_s.end());
  const double median = epoch_s[epoch_s.size() / 2];
  std::printf(
      "{\"side\":\"finetuned\",\"images\":%lld,\"threads\":%d,\"scan_s\":%.3f,\"decode_s\":%.3f,"
      "\"epoch_s_median\":%.3f,\"epoch_s_min\":%.3f,\"first_epoch_s\":%.3f,\"epochs\":%d,\"checksum\":%.3f}\n",
      static_cast<long long>(n), threads, scan_s, decode_s, median, epoch_s.front(),
      scan_s + decode_s + median, epochs, checksum);
  return 0;
}
