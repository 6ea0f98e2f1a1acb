// The C++ half of the model.onnx checks (tests/onnx/test_onnx.py does the
// rest with onnxruntime and onnx's checker): makes a classifier, saves it as
// model.pt, converts it with ExportOnnx to model.onnx, and writes a fixed
// random input with what LibTorch's model.pt (loaded back from the file)
// returns for it.
//
// usage: ft_onnx_check MODEL IMAGE_SIZE OUTDIR
//   MODEL is one of
//     ARCH              a catalog backbone with seeded random weights, and
//                       BatchNorm layers in a non-trivial state (running
//                       statistics from train-mode passes, random affine), so
//                       that the BatchNorm folding is really tested;
//     chain:MODEL_PT    a model:// start: the backbone of a saved model.pt
//                       under a new head, as worker/train/starting_model.cc
//                       builds it;
//     torchscript:FILE  a TorchScript backbone (LoadTorchScriptBackbone)
//                       under a new head.
// Writes OUTDIR/model.pt, model.onnx, input.bin ([3,3,S,S] float32),
// logits.bin, features.bin (float32, row-major) and io.json (their shapes,
// the opset, the converter version, the export time). Exit 1 with the
// converter's error on stderr when it refuses the model.
#include <chrono>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "worker/backbones/backbone.h"
#include "worker/export/onnx_export.h"
#include "worker/export/torchscript.h"

namespace {

constexpr int64_t kClasses = 5;
constexpr int64_t kImages = 3;
constexpr int kTrainPasses = 6;  // BatchNorm momentum 0.1: ~half the way to the batch statistics

std::vector<std::string> ClassNames(int64_t n) {
  std::vector<std::string> names;
  for (int64_t i = 0; i < n; ++i) names.push_back(absl::StrCat("class", i));
  return names;
}

// Running statistics from a few train-mode passes over random images, then
// a random affine part: BatchNorm layers that are far from the identity.
void ScrambleBatchNorm(torch::jit::Module& model, int64_t image_size) {
  torch::NoGradGuard no_grad;
  model.train(true);
  for (int i = 0; i < kTrainPasses; ++i) model.forward({torch::randn({4, 3, image_size, image_size})});
  model.eval();
  for (const auto& m : model.named_modules()) {
    if (!m.value.hasattr("running_var")) continue;
    m.value.attr("weight").toTensor().uniform_(0.5, 1.5);
    m.value.attr("bias").toTensor().normal_(0.0, 0.2);
  }
  // ConvNeXt's layer scale starts at 1e-6, which would hide its blocks.
  for (const auto& p : model.named_parameters()) {
    if (absl::EndsWith(p.name, "layer_scale")) p.value.uniform_(0.1, 0.5);
  }
}

absl::StatusOr<torch::jit::Module> MakeModel(const std::string& spec, int64_t image_size) {
  if (absl::StartsWith(spec, "chain:")) {
    torch::jit::Module source = torch::jit::load(spec.substr(6));
    torch::jit::Module backbone = source.attr("backbone").toModule();
    const int64_t feature_dim = source.attr("head").toModule().attr("weight").toTensor().size(1);
    return ft::worker::BuildClassifier(backbone, feature_dim, ClassNames(kClasses - 1));
  }
  if (absl::StartsWith(spec, "torchscript:")) {
    auto backbone = ft::worker::LoadTorchScriptBackbone(spec.substr(12), static_cast<int>(image_size));
    if (!backbone.ok()) return backbone.status();
    return ft::worker::BuildClassifier(backbone->module, backbone->feature_dim, ClassNames(kClasses));
  }
  auto backbone = ft::worker::BuildBackbone(spec);
  if (!backbone.ok()) return backbone.status();
  torch::jit::Module model = ft::worker::BuildClassifier(backbone->module, backbone->feature_dim, ClassNames(kClasses));
  ScrambleBatchNorm(model, image_size);
  return model;
}

bool WriteFloats(const torch::Tensor& t, const std::string& path) {
  const torch::Tensor c = t.to(torch::kFloat).contiguous();
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.nbytes()));
  return static_cast<bool>(out);
}

std::string Shape(const torch::Tensor& t) { return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]"); }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: ft_onnx_check ARCH|chain:MODEL_PT|torchscript:FILE IMAGE_SIZE OUTDIR" << std::endl;
    return 2;
  }
  // One thread: ctest runs two of these side by side on 2 cores, and
  // OpenMP threads that outnumber the cores spin instead of working.
  torch::set_num_threads(1);
  torch::jit::setGraphExecutorOptimize(false);  // as the worker runs
  torch::manual_seed(0);
  const std::string spec = argv[1];
  const int64_t image_size = std::stoll(argv[2]);
  const std::string dir = argv[3];
  try {
    auto model = MakeModel(spec, image_size);
    if (!model.ok()) {
      std::cerr << spec << ": " << model.status() << std::endl;
      return 1;
    }
    model->eval();
    const std::string pt = dir + "/model.pt";
    if (auto saved = ft::worker::SaveTorchScript(*model, pt); !saved.ok()) {
      std::cerr << saved << std::endl;
      return 1;
    }

    const auto start = std::chrono::steady_clock::now();
    std::vector<std::string> warnings;
    const absl::Status written = ft::worker::WriteOnnx(*model, image_size, dir + "/model.onnx", &warnings);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!written.ok()) {
      std::cerr << spec << ": " << written << std::endl;
      return 1;
    }

    // The reference is model.pt as a user loads it, not the module in memory.
    torch::jit::Module loaded = torch::jit::load(pt);
    loaded.eval();
    torch::NoGradGuard no_grad;
    const torch::Tensor input = torch::randn({kImages, 3, image_size, image_size});
    const torch::Tensor logits = loaded.forward({input}).toTensor();
    const torch::Tensor features = loaded.get_method("features")({input}).toTensor();
    if (!WriteFloats(input, dir + "/input.bin") || !WriteFloats(logits, dir + "/logits.bin") ||
        !WriteFloats(features, dir + "/features.bin")) {
      std::cerr << "cannot write to " << dir << std::endl;
      return 1;
    }
    std::vector<std::string> quoted;
    for (const auto& w : warnings) {
      quoted.push_back(absl::StrCat("\"", absl::StrReplaceAll(w, {{"\\", "\\\\"}, {"\"", "\\\""}}), "\""));
    }
    std::ofstream json(dir + "/io.json");
    json << "{\"input\": " << Shape(input) << ", \"logits\": " << Shape(logits) << ", \"features\": " << Shape(features)
         << ", \"opset\": " << ft::worker::kOnnxOpset << ", \"converter_version\": \""
         << ft::worker::kOnnxConverterVersion << "\", \"verified_with\": \"" << ft::worker::kOnnxVerifiedWith
         << "\", \"export_seconds\": " << seconds << ", \"warnings\": ["
         << absl::StrJoin(quoted, ", ") << "]}\n";
    std::cout << spec << ": model.onnx written in " << seconds << " s" << std::endl;
  } catch (const std::exception& e) {
    std::cerr << spec << ": " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
