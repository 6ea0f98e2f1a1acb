#include <random>

#include <torch/torch.h>

#include "gtest/gtest.h"
#include "worker/backbones/backbone.h"
#include "worker/catalog/catalog.h"
#include "worker/data/images.h"

namespace ft::worker {
namespace {

bool Training(const torch::jit::Module& m) { return m.attr("training").toBool(); }

TEST(BackboneTest, ResNetShapesNamesAndFreeze) {
  torch::manual_seed(0);
  auto b = BuildBackbone("resnet18");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->feature_dim, 512);
  auto model = BuildClassifier(b->module, b->feature_dim, {"a", "b", "c"});
  bool has_fc = false, has_layer4 = false;
  for (const auto& p : model.named_parameters()) {
    has_fc |= p.name.rfind("backbone.fc", 0) == 0;
    has_layer4 |= p.name == "backbone.layer4.1.bn2.weight";
  }
  EXPECT_FALSE(has_fc);
  EXPECT_TRUE(has_layer4);
  auto x = torch::randn({2, 3, 32, 32});
  EXPECT_EQ(model.forward({x}).toTensor().sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(model.get_method("features")({x}).toTensor().sizes(), (std::vector<int64_t>{2, 512}));

  ApplyFreeze(model, *b, 2);
  auto bb = model.attr("backbone").toModule();
  EXPECT_FALSE(bb.attr("conv1").toModule().attr("weight").toTensor().requires_grad());
  EXPECT_FALSE(Training(bb.attr("bn1").toModule()));
  EXPECT_FALSE(Training(bb.attr("layer1").toModule()));
  EXPECT_TRUE(Training(bb.attr("layer2").toModule()));
  EXPECT_TRUE(bb.attr("layer2").toModule().attr("0").toModule().attr("conv1").toModule().attr("weight").toTensor().requires_grad());
  EXPECT_TRUE(Training(model.attr("head").toModule()));

  ApplyFreeze(model, *b, -1);
  for (const auto& p : bb.parameters()) EXPECT_FALSE(p.requires_grad());
  EXPECT_FALSE(Training(bb));
  for (const auto& p : model.attr("head").toModule().parameters()) EXPECT_TRUE(p.requires_grad());

  ApplyFreeze(model, *b, 0);
  for (const auto& p : model.parameters()) EXPECT_TRUE(p.requires_grad());
  EXPECT_TRUE(absl::IsInvalidArgument(BuildBackbone("resnet9000").status()));
}

TEST(ImagesTest, EvalTransformNormalisesAndReplicatesGray) {
  cv::Mat gray(40, 30, CV_8UC1, cv::Scalar(128));
  TransformOptions o;
  o.image_size = 16;
  std::vector<float> out(3 * 16 * 16);
  std::mt19937_64 rng(1);
  TransformInto(gray, o, &rng, out.data());
  for (int c = 0; c < 3; ++c) {
    const float expected = (128.0f / 255.0f - o.mean[c]) / o.std[c];
    EXPECT_NEAR(out[c * 256 + 17], expected, 1e-5);
  }
  EXPECT_EQ(EvalResizeSize(224), 256);
  // The train transform is deterministic for a given seed.
  o.train = true;
  cv::Mat noise(50, 50, CV_8UC3);
  cv::randu(noise, 0, 255);
  std::vector<float> a(3 * 256), b(3 * 256);
  std::mt19937_64 r1(9), r2(9);
  TransformInto(noise, o, &r1, a.data());
  TransformInto(noise, o, &r2, b.data());
  EXPECT_EQ(a, b);
}

}  // namespace
}  // namespace ft::worker

namespace ft::worker {
namespace {

// Every catalogued backbone: the server's stage list and feature width agree
// with the worker's, and each freeze depth freezes strictly more.
TEST(BackboneTest, CatalogAgreesAndEveryDepthFreezes) {
  for (const auto& info : catalog::Backbones()) {
    if (catalog::IsTorchScriptBackbone(info.name)) continue;
    SCOPED_TRACE(info.name);
    auto b = BuildBackbone(info.name);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->stage_names, info.stages);
    EXPECT_EQ(b->feature_dim, info.feature_dim);
    EXPECT_FALSE(info.pretrained_files.empty());
    auto model = BuildClassifier(b->module, b->feature_dim, {"a", "b"});
    int64_t last_frozen = -1;
    for (int depth = 0; depth <= static_cast<int>(info.stages.size()); ++depth) {
      ApplyFreeze(model, *b, depth);
      int64_t frozen = 0;
      for (const auto& p : model.attr("backbone").toModule().parameters()) frozen += p.requires_grad() ? 0 : p.numel();
      EXPECT_GT(frozen, last_frozen) << "depth " << depth;
      last_frozen = frozen;
    }
    int64_t total = 0;
    for (const auto& p : model.attr("backbone").toModule().parameters()) total += p.numel();
    EXPECT_EQ(last_frozen, total) << "the stages must cover every backbone parameter";
  }
}

}  // namespace
}  // namespace ft::worker
