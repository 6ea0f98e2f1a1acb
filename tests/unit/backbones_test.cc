#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "common/catalog/catalog.h"
#include "gtest/gtest.h"
#include "worker/backbones/backbone.h"

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

TEST(BackboneTest, NormalizationFromMetadataAndModules) {
  auto none = NormalizationFromMetadata({{"format", "pt"}}, "f");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  auto n = NormalizationFromMetadata({{"mean", "[0.5, 0.4, 0.3]"}, {"std", "0.2,0.25, 0.3"}}, "f");
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_TRUE(n->has_value());
  EXPECT_FLOAT_EQ((**n).mean[1], 0.4f);
  EXPECT_FLOAT_EQ((**n).std[2], 0.3f);
  EXPECT_EQ((**n).source, "f");
  for (const auto& bad : std::vector<std::map<std::string, std::string>>{
           {{"mean", "0.5,0.5,0.5"}},
           {{"mean", "0.5,0.5"}, {"std", "1,1"}},
           {{"mean", "a,b,c"}, {"std", "1,1,1"}},
           {{"mean", "0,0,0"}, {"std", "1,0,1"}},
           {{"mean", "0,0,nan"}, {"std", "1,1,1"}}}) {
    auto r = NormalizationFromMetadata(bad, "weights.safetensors");
    EXPECT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
    EXPECT_NE(r.status().message().find("weights.safetensors"), std::string::npos);
  }
  torch::jit::Module m("M");
  auto from = NormalizationFromModule(m, "m");
  ASSERT_TRUE(from.ok());
  EXPECT_FALSE(from->has_value());
  m.register_attribute("mean", c10::ListType::ofFloats(), c10::List<double>({0.1, 0.2, 0.3}));
  EXPECT_TRUE(absl::IsFailedPrecondition(NormalizationFromModule(m, "m").status()));
  m.register_attribute("std", c10::TensorType::get(), torch::tensor({0.5, 0.5, 0.5}));
  from = NormalizationFromModule(m, "m");
  ASSERT_TRUE(from.ok()) << from.status();
  ASSERT_TRUE(from->has_value());
  EXPECT_FLOAT_EQ((**from).mean[2], 0.3f);
  EXPECT_FLOAT_EQ((**from).std[0], 0.5f);
}

// What StoreNormalization writes, NormalizationFromModule reads back.
TEST(BackboneTest, StoreNormalizationRoundTrips) {
  Normalization norm;
  norm.mean = {0.5f, 0.25f, 0.125f};
  norm.std = {0.2f, 0.3f, 0.4f};
  torch::jit::Module m("M");
  StoreNormalization(norm, m);
  auto back = NormalizationFromModule(m, "stored");
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_TRUE(back->has_value());
  EXPECT_EQ((**back).mean, norm.mean);
  EXPECT_EQ((**back).std, norm.std);
  EXPECT_EQ((**back).source, "stored");
}

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
