#include <string>

#include <nlohmann/json.hpp>

#include "gtest/gtest.h"
#include "worker/export/metadata.h"

namespace ft::worker {
namespace {

TEST(MetadataTest, DescribesTheModel) {
  ModelMetadata m;
  m.job_id = "job-1";
  m.spec.set_backbone("resnet18");
  m.spec.set_image_size(64);
  m.spec.set_freeze_depth(2);
  m.spec.set_augment("light");
  m.spec.set_dataset_uri("file:///data/shapes");
  m.classes = {"cat", "dog"};
  m.resize_size = 73;
  m.mean = {0.5f, 0.25f, 0.125f};
  m.std = {1.0f, 2.0f, 4.0f};
  m.feature_dim = 512;
  m.stages = {"stem", "layer1"};
  m.val_source = "split";
  m.train_images = 80;
  m.val_images = 20;
  m.best_epoch = 2;
  m.metrics.set_val_accuracy(0.75f);
  for (int e = 1; e <= 3; ++e) {
    pb::EpochSummary s;
    s.set_epoch(e);
    s.set_best(e == 2);
    m.history.push_back(s);
  }
  const nlohmann::json j = nlohmann::json::parse(MetadataJson(m));
  EXPECT_EQ(j["format"], "finetuned.classifier.v1");
  EXPECT_EQ(j["job_id"], "job-1");
  EXPECT_EQ(j["backbone"], "resnet18");
  EXPECT_EQ(j["classes"], (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(j["num_classes"], 2);
  EXPECT_EQ(j["image_size"], 64);
  EXPECT_EQ(j["resize_size"], 73);
  EXPECT_EQ(j["mean"], (std::vector<float>{0.5f, 0.25f, 0.125f}));
  EXPECT_EQ(j["std"], (std::vector<float>{1.0f, 2.0f, 4.0f}));
  EXPECT_EQ(j["feature_dim"], 512);
  EXPECT_EQ(j["freeze_depth"], 2);
  EXPECT_EQ(j["stages"], (std::vector<std::string>{"stem", "layer1"}));
  EXPECT_EQ(j["dataset_uri"], "file:///data/shapes");
  EXPECT_EQ(j["augment"], "light");
  EXPECT_EQ(j["val_source"], "split");
  EXPECT_EQ(j["train_images"], 80);
  EXPECT_EQ(j["val_images"], 20);
  EXPECT_EQ(j["best_epoch"], 2);
  EXPECT_EQ(j["spec"]["backbone"], "resnet18");
  EXPECT_FLOAT_EQ(j["metrics"]["val_accuracy"].get<float>(), 0.75f);
  ASSERT_EQ(j["history"].size(), 3u);
  EXPECT_EQ(j["history"][1]["epoch"], 2);
  EXPECT_EQ(j["history"][1]["best"], true);
  // Without a test split there is no test entry.
  EXPECT_FALSE(j.contains("test_source"));
  EXPECT_FALSE(j.contains("test_images"));
  m.test_source = "test";
  m.test_images = 10;
  const nlohmann::json t = nlohmann::json::parse(MetadataJson(m));
  EXPECT_EQ(t["test_source"], "test");
  EXPECT_EQ(t["test_images"], 10);
}

}  // namespace
}  // namespace ft::worker
