// The ONNX converter on tiny scripted classifiers: the file it writes (read
// back with the ONNX protobuf classes) and the errors it gives. Whether the
// file computes what model.pt computes is tests/onnx's business, with a real
// runtime.
#include <filesystem>
#include <fstream>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>
#include <torch/script.h>

#include "gtest/gtest.h"
#include "tests/unit/test_dirs.h"
#include "worker/export/onnx_export.h"

namespace ft::worker {
namespace {

// A classifier with forward(x) -> logits and features(x) -> pooled
// features, whose features run `body` (TorchScript statements on x).
torch::jit::Module Classifier(const std::string& body, int64_t feature_dim = 3, bool with_features = true) {
  torch::jit::Module m("__torch__.ft.TinyClassifier", std::make_shared<torch::jit::CompilationUnit>(),
                       /*shouldMangle=*/true);
  m.register_attribute("training", c10::BoolType::get(), false);
  m.register_parameter("conv_weight", torch::randn({3, 3, 3, 3}), false);
  m.register_parameter("head_weight", torch::randn({2, feature_dim}), false);
  m.register_parameter("head_bias", torch::randn({2}), false);
  m.register_parameter("bn_weight", torch::rand({3}) + 0.5, false);
  m.register_parameter("bn_bias", torch::randn({3}), false);
  m.register_buffer("bn_mean", torch::randn({3}));
  m.register_buffer("bn_var", torch::rand({3}) + 0.5);
  if (with_features) {
    m.define("def features(self, x):\n" + body + "    return x\n" +
             "def forward(self, x):\n    return torch.linear(self.features(x), self.head_weight, self.head_bias)\n");
  } else {
    m.define("def forward(self, x):\n" + body + "    return x\n");
  }
  return m;
}

constexpr char kPooled[] =
    "    x = torch.relu(torch.conv2d(x, self.conv_weight, None, [1, 1], [1, 1], [1, 1], 1))\n"
    "    x = torch.flatten(torch.adaptive_avg_pool2d(x, [1, 1]), 1)\n";

TEST(OnnxExportTest, WritesTheContractsInputAndOutputs) {
  absl::StatusOr<OnnxExport> out = ExportOnnx(Classifier(kPooled), /*image_size=*/8);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->opset, 17);
  EXPECT_EQ(out->converter_version, kOnnxConverterVersion);

  onnx::ModelProto model;
  ASSERT_TRUE(model.ParseFromString(out->model_proto_bytes));
  ASSERT_EQ(model.opset_import_size(), 1);
  EXPECT_EQ(model.opset_import(0).domain(), "");
  EXPECT_EQ(model.opset_import(0).version(), 17);
  const onnx::GraphProto& g = model.graph();
  ASSERT_EQ(g.input_size(), 1);
  EXPECT_EQ(g.input(0).name(), "input");
  const auto& in = g.input(0).type().tensor_type();
  EXPECT_EQ(in.elem_type(), onnx::TensorProto::FLOAT);
  ASSERT_EQ(in.shape().dim_size(), 4);
  EXPECT_EQ(in.shape().dim(0).dim_param(), "N");  // the batch stays dynamic
  EXPECT_EQ(in.shape().dim(1).dim_value(), 3);
  EXPECT_EQ(in.shape().dim(2).dim_value(), 8);
  EXPECT_EQ(in.shape().dim(3).dim_value(), 8);
  ASSERT_EQ(g.output_size(), 2);
  EXPECT_EQ(g.output(0).name(), "logits");
  EXPECT_EQ(g.output(1).name(), "features");
  EXPECT_EQ(g.output(0).type().tensor_type().shape().dim(0).dim_param(), "N");
  EXPECT_EQ(g.output(0).type().tensor_type().shape().dim(1).dim_value(), 2);
  EXPECT_EQ(g.output(1).type().tensor_type().shape().dim(1).dim_value(), 3);

  // One convolution: forward and features share the backbone's nodes.
  int convs = 0;
  for (const auto& node : g.node()) convs += node.op_type() == "Conv";
  EXPECT_EQ(convs, 1);
  // The weights are initializers, stored once each.
  EXPECT_EQ(g.initializer_size(), 3 + 1);  // conv weight, head weight and bias, the flatten shape
}

TEST(OnnxExportTest, NamesAnOpWithoutAMapping) {
  const auto out = ExportOnnx(Classifier(std::string(kPooled) + "    x = torch.erfinv(x)\n"), 8);
  ASSERT_EQ(out.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(out.status().message(), "model.onnx not written: no ONNX mapping for aten::erfinv");
}

TEST(OnnxExportTest, CountsTheOtherOpsWithoutAMapping) {
  const auto out = ExportOnnx(
      Classifier(std::string(kPooled) + "    x = torch.cumsum(torch.sinh(torch.erfinv(x)), 1)\n"), 8);
  ASSERT_EQ(out.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(out.status().message(),
            "model.onnx not written: no ONNX mapping for aten::erfinv (and 2 more: aten::sinh, aten::cumsum)");
}

TEST(OnnxExportTest, TakesTheBranchOfAShapeCheck) {
  // As a scripted torchvision BatchNorm checks input.dim(): the rank is fixed.
  const auto out = ExportOnnx(Classifier("    if x.dim() != 4:\n"
                                         "        x = torch.sigmoid(x)\n"
                                         "    else:\n"
                                         "        x = torch.tanh(x)\n" +
                                         std::string(kPooled)),
                              8);
  ASSERT_TRUE(out.ok()) << out.status();
  onnx::ModelProto model;
  ASSERT_TRUE(model.ParseFromString(out->model_proto_bytes));
  int tanh = 0, sigmoid = 0;
  for (const auto& node : model.graph().node()) {
    tanh += node.op_type() == "Tanh";
    sigmoid += node.op_type() == "Sigmoid";
  }
  EXPECT_EQ(tanh, 1);
  EXPECT_EQ(sigmoid, 0);
}

TEST(OnnxExportTest, RefusesControlFlowOnTheBatchSizeOrTheData) {
  // The same for the two batch sizes the converter tries, but not for N = 1.
  const auto on_batch = ExportOnnx(Classifier(std::string(kPooled) +
                                              "    if x.size(0) == 1:\n"
                                              "        x = x * 2.0\n"),
                                   8);
  EXPECT_EQ(on_batch.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(on_batch.status().message(), "model.onnx not written: no ONNX mapping for prim::If");
  const auto on_data = ExportOnnx(Classifier(std::string(kPooled) +
                                             "    if float(x.sum()) > 0.0:\n"
                                             "        x = x * 2.0\n"),
                                  8);
  EXPECT_EQ(on_data.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(on_data.status().message(), "model.onnx not written: no ONNX mapping for prim::If");
}

TEST(OnnxExportTest, ReshapesWithTheBatchAsMinusOneButNotByTheData) {
  // x.size(0) differs between batches: the reshape keeps N dynamic.
  const auto by_batch = ExportOnnx(Classifier(std::string(kPooled) + "    x = x.view([x.size(0), -1])\n"), 8);
  ASSERT_TRUE(by_batch.ok()) << by_batch.status();
  onnx::ModelProto model;
  ASSERT_TRUE(model.ParseFromString(by_batch->model_proto_bytes));
  std::set<std::string> shapes;
  for (const auto& node : model.graph().node()) {
    if (node.op_type() == "Reshape") shapes.insert(node.input(1));
  }
  int checked = 0;
  for (const auto& init : model.graph().initializer()) {
    if (!shapes.count(init.name())) continue;
    ASSERT_EQ(init.data_type(), onnx::TensorProto::INT64);
    std::vector<int64_t> dims(init.raw_data().size() / sizeof(int64_t));
    std::memcpy(dims.data(), init.raw_data().data(), init.raw_data().size());
    EXPECT_EQ(dims, (std::vector<int64_t>{-1, 3}));
    ++checked;
  }
  EXPECT_GT(checked, 0);
  // A shape read from the data fits one input only.
  const auto by_data =
      ExportOnnx(Classifier(std::string(kPooled) + "    x = x.view([x.size(0), int(float(x.sum()) > 1e9) + 3])\n"), 8);
  EXPECT_EQ(by_data.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(std::string(by_data.status().message()),
            "model.onnx not written: no ONNX mapping for aten::view whose argument 1 depends on the input's values");
}

TEST(OnnxExportTest, NeedsAFeaturesMethod) {
  const auto out = ExportOnnx(Classifier(kPooled, 3, /*with_features=*/false), 8);
  ASSERT_EQ(out.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(out.status().message(), "model.onnx not written: the model has no features(x) method");
}

TEST(OnnxExportTest, SaysWhenTheModelDoesNotRunAtTheImageSize) {
  // A 3x3 convolution without padding cannot run on 2x2 px.
  const auto out = ExportOnnx(
      Classifier("    x = torch.conv2d(x, self.conv_weight, None, [1, 1], [0, 0], [1, 1], 1)\n"
                 "    x = torch.flatten(torch.adaptive_avg_pool2d(x, [1, 1]), 1)\n"),
      2);
  ASSERT_EQ(out.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(out.status().message().find("does not run on 2 px"), std::string::npos) << out.status();
  EXPECT_EQ(ExportOnnx(Classifier(kPooled), 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(OnnxExportTest, FoldsBatchNormAndLeavesTheModelAsItWas) {
  torch::jit::Module m = Classifier(
      "    x = torch.conv2d(x, self.conv_weight, None, [1, 1], [1, 1], [1, 1], 1)\n"
      "    x = torch.batch_norm(x, self.bn_weight, self.bn_bias, self.bn_mean, self.bn_var, False, 0.1, 1e-5, True)\n"
      "    x = torch.flatten(torch.adaptive_avg_pool2d(torch.relu(x), [1, 1]), 1)\n");
  m.eval();
  const torch::Tensor x = torch::randn({2, 3, 8, 8});
  const torch::Tensor before = m.forward({x}).toTensor();
  std::vector<torch::Tensor> tensors;
  for (const auto& p : m.named_attributes()) {
    if (p.value.isTensor()) tensors.push_back(p.value.toTensor().clone());
  }
  const auto out = ExportOnnx(m, 8);
  ASSERT_TRUE(out.ok()) << out.status();
  onnx::ModelProto model;
  ASSERT_TRUE(model.ParseFromString(out->model_proto_bytes));
  for (const auto& node : model.graph().node()) EXPECT_NE(node.op_type(), "BatchNormalization");

  EXPECT_TRUE(m.find_method("features").has_value());
  EXPECT_TRUE(torch::equal(m.forward({x}).toTensor(), before));
  size_t i = 0;
  for (const auto& p : m.named_attributes()) {
    if (p.value.isTensor()) {
      EXPECT_TRUE(torch::equal(p.value.toTensor(), tensors[i++])) << p.name;
    }
  }
}

class WriteOnnxTest : public testing::TempDirTest {};

TEST_F(WriteOnnxTest, WritesTheFileOrNothing) {
  const std::string path = (dir_ / "model.onnx").string();
  ASSERT_TRUE(WriteOnnx(Classifier(kPooled), 8, path).ok());
  onnx::ModelProto model;
  std::ifstream in(path, std::ios::binary);
  ASSERT_TRUE(model.ParseFromIstream(&in));
  EXPECT_EQ(model.graph().output(0).name(), "logits");

  const std::string refused = (dir_ / "refused.onnx").string();
  const absl::Status status = WriteOnnx(Classifier(std::string(kPooled) + "    x = torch.erfinv(x)\n"), 8, refused);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_FALSE(std::filesystem::exists(refused));
  EXPECT_FALSE(WriteOnnx(Classifier(kPooled), 8, (dir_ / "no" / "such" / "dir.onnx").string()).ok());
}

}  // namespace
}  // namespace ft::worker
