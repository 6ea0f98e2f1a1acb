// model.onnx: the trained classifier as an ONNX model, converted in C++
// from the frozen TorchScript graph (LibTorch has no ONNX exporter; torch.onnx
// is Python). The classifier is cloned, put in eval mode, inlined and
// frozen (parameters become constants and each BatchNorm that follows a
// convolution is folded into it), and each aten op of the frozen graph is
// mapped to ONNX nodes of opset 17; the constants become initializers.
//
// The file has one input, `input`: float32 [N,3,H,W], with N dynamic and H
// and W fixed to `image_size`; and two outputs, the same as model.pt's two
// methods: `logits` [N, classes] (forward) and `features` [N, D]
// (features). The converter does not check its own output: tests/onnx runs
// every architecture through a real runtime (onnxruntime) and onnx's checker.
#ifndef FT_WORKER_EXPORT_ONNX_EXPORT_H_
#define FT_WORKER_EXPORT_ONNX_EXPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ft::worker {

// The ONNX operator set the converter writes, and its version string (for
// metadata.json and the model card): it changes whenever a mapping does.
inline constexpr int kOnnxOpset = 17;
inline constexpr char kOnnxConverterVersion[] = "finetuned-onnx 1";
// The runtime the test suite checks every architecture's model.onnx against
// (tests/onnx: its package.json pins this version, and a test keeps the two
// equal); metadata.json and the model card name it.
inline constexpr char kOnnxVerifiedWith[] = "onnxruntime-node 1.30.0";

struct OnnxExport {
  std::string model_proto_bytes;  // a serialised onnx.ModelProto
  int opset = kOnnxOpset;
  std::string converter_version = kOnnxConverterVersion;
  // What a person may want to know about the conversion (e.g. that shape
  // checks of a TorchScript backbone were followed for the fixed size); the
  // file is right regardless: no warning ever stands for an approximation.
  std::vector<std::string> warnings;
};

// Converts `classifier`, a module with forward(x) -> logits and features(x)
// -> pooled features (BuildClassifier's, or a model.pt loaded back), for
// inputs of image_size x image_size px. `classifier` is left as it was (its
// tensors are shared, never written; one on a GPU is copied to the CPU).
// The conversion runs the frozen graph on random batches of 2 and 3 images
// on the CPU, to learn every shape and which of them depend on N. Never
// throws. Errors, each message starting "model.onnx not written: ":
//   UNIMPLEMENTED "no ONNX mapping for aten::foo (and N more: ...)" when the
//     graph holds ops the converter does not map, control flow other than a
//     check of a fixed shape, an in-place op it cannot make functional, or an
//     argument that depends on the input's values (or on N, but for a
//     reshape's batch dim);
//   INVALID_ARGUMENT for an image_size below 1; FAILED_PRECONDITION when
//     the module lacks forward or features, they do not return float32
//     tensors, or the model is over protobuf's 2 GiB; INTERNAL with
//     LibTorch's reason when freezing or running the graph fails.
absl::StatusOr<OnnxExport> ExportOnnx(const torch::jit::Module& classifier, int64_t image_size);

// ExportOnnx, then writes the model to `path` atomically (a temporary file,
// then a rename), so that no reader sees a torn model.onnx; the warnings go
// to `warnings` when it is not null. ExportOnnx's errors, or INTERNAL naming
// the path when it cannot be written.
absl::Status WriteOnnx(const torch::jit::Module& classifier, int64_t image_size, const std::string& path,
                       std::vector<std::string>* warnings = nullptr);

}  // namespace ft::worker

#endif  // FT_WORKER_EXPORT_ONNX_EXPORT_H_
