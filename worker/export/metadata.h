// metadata.json, the description that travels with an exported model: its
// classes in logit order, its input (size, mean, std), where it came from,
// and how it trained.
#ifndef FT_WORKER_EXPORT_METADATA_H_
#define FT_WORKER_EXPORT_METADATA_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "finetune/v1/finetune.pb.h"

namespace ft::worker {

namespace pb = ::finetune::v1;

// What the export to ONNX came to (metadata.json "onnx"): the file with the
// converter's facts, or why there is none.
struct OnnxFacts {
  std::string file;           // "model.onnx"; empty when not exported
  int opset = 0;
  std::string converter;      // its name and version
  std::string verified_with;  // the runtime the test suite checks it against
  std::string error;          // why there is no model.onnx; empty when exported
};

// The software that trained the model.
struct SoftwareVersions {
  std::string finetuned;  // this project's version
  std::string libtorch;   // TORCH_VERSION
  std::string opencv;     // CV_VERSION
  std::string blas;       // BlasInUse()
};

struct ModelMetadata {
  std::string job_id;
  pb::JobSpec spec;
  std::vector<std::string> classes;  // in logit order
  int resize_size = 0;               // the eval transform's shorter side
  std::array<float, 3> mean = {};
  std::array<float, 3> std = {};
  int64_t feature_dim = 0;
  std::vector<std::string> stages;
  std::string val_source;
  std::string test_source;  // empty without a test split
  int64_t train_images = 0;
  int64_t val_images = 0;
  int64_t test_images = 0;  // 0 without a test split
  int best_epoch = 0;       // the exported epoch
  pb::JobMetrics metrics;
  std::vector<pb::EpochSummary> history;
  // The dataset: its layout (imagefolder, idx, csv); the sha256 of its
  // archive (dataset:// and file:// archives; empty for a folder); and the
  // sha256 of its listing, which every dataset has: each split's samples in
  // order, as "split<TAB>class<TAB>path relative to the dataset<TAB>IDX
  // record or -1" lines. The listing names the images, not their bytes.
  std::string dataset_format;
  std::string dataset_sha256;
  std::string dataset_listing_sha256;
  // The starting weights' file (its base name) and sha256: the .pth,
  // .safetensors or TorchScript file, or the model.pt of a model:// source;
  // empty for weights none.
  std::string weights_file;
  std::string weights_sha256;
  SoftwareVersions software;
  // Unset where the worker did not try ONNX.
  std::optional<OnnxFacts> onnx;
};

// The metadata.json text (format finetuned.classifier.v1, indented by 2):
// the fields above, with the spec, the metrics and each epoch's summary in
// the protobuf JSON mapping; the dataset's facts under "dataset", the
// weights' under "weights", the versions under "software", and the ONNX
// facts under "onnx" when set ({"file", "opset", "converter",
// "verified_with"}, or {"error"}).
std::string MetadataJson(const ModelMetadata& metadata);

}  // namespace ft::worker

#endif  // FT_WORKER_EXPORT_METADATA_H_
