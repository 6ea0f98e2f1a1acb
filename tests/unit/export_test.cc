#include <string>

#include <nlohmann/json.hpp>

#include "gtest/gtest.h"
#include "worker/export/metadata.h"
#include "worker/export/model_card.h"

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

// A model with a test split, as the trainer describes it.
ModelMetadata TestedModel() {
  ModelMetadata m;
  m.job_id = "job-7";
  m.spec.set_name("pets");
  m.spec.set_backbone("resnet18");
  m.spec.set_image_size(64);
  m.spec.set_seed(42);
  m.spec.set_epochs(3);
  m.spec.set_batch_size(16);
  m.spec.set_optimizer("adam");
  m.spec.set_learning_rate(0.001f);
  m.spec.set_augment("standard");
  m.spec.set_weights_uri("pretrained");
  m.spec.set_dataset_uri("dataset://pets");
  m.classes = {"cat", "dog", "bird|fish"};
  m.resize_size = 73;
  m.mean = {0.485f, 0.456f, 0.406f};
  m.std = {0.229f, 0.224f, 0.225f};
  m.feature_dim = 512;
  m.stages = {"stem", "layer1", "layer2", "layer3", "layer4"};
  m.val_source = "val/ folder";
  m.test_source = "test/ folder";
  m.train_images = 300;
  m.val_images = 60;
  m.test_images = 30;
  m.best_epoch = 2;
  m.metrics.set_val_accuracy(0.8125f);
  m.metrics.set_epochs_completed(3);
  m.metrics.set_best_epoch(2);
  m.metrics.set_has_test(true);
  m.metrics.set_test_accuracy(0.7f);
  const char* names[] = {"cat", "dog", "bird|fish"};
  for (int c = 0; c < 3; ++c) {
    pb::ClassMetrics* k = m.metrics.add_test_per_class();
    k->set_name(names[c]);
    k->set_precision(0.5f + 0.125f * c);
    k->set_recall(0.25f * (c + 1));
    k->set_f1(0.6f);
    k->set_support(10);
  }
  for (int i = 0; i < 9; ++i) m.metrics.add_test_confusion(i % 4 == 0 ? 7 : 1);
  m.dataset_format = "imagefolder";
  m.dataset_sha256 = std::string(64, 'a');
  m.dataset_listing_sha256 = std::string(64, 'b');
  m.weights_file = "resnet18-f37072fd.pth";
  m.weights_sha256 = std::string(64, 'c');
  m.software = {"0.1.0", "1.13.1", "4.6.0", "BLIS (libblis.so.4)"};
  return m;
}

TEST(ModelCardTest, StatesWhatTheMetadataHolds) {
  ModelMetadata m = TestedModel();
  m.onnx = OnnxFacts{"model.onnx", 17, "finetuned-onnx 1", "onnxruntime-node 1.30.0", ""};
  const std::string card = ModelCard(m);
  auto has = [&card](const std::string& text) {
    EXPECT_NE(card.find(text), std::string::npos) << "missing: " << text << "\n" << card;
  };
  // Classes in logit order, with a pipe escaped so that the table holds.
  has("| 0 | cat |\n| 1 | dog |\n| 2 | bird\\|fish |");
  // Metrics and the per-class table of the test split.
  has("| validation (val/ folder) | 60 | 0.8125 |");
  has("| test (test/ folder) | 30 | 0.7000 |");
  has("| class | precision | recall | F1 | support |");
  has("| dog | 0.6250 | 0.5000 | 0.6000 | 10 |");
  has("| 0 cat | 7 | 1 | 1 |");
  // Dataset, weights, seed and versions.
  has(std::string(64, 'a'));
  has(std::string(64, 'b'));
  has("300 train, 60 validation (val/ folder), 30 test (test/ folder)");
  has("file `resnet18-f37072fd.pth`");
  has(std::string(64, 'c'));
  has("- Seed: 42");
  has("finetuned 0.1.0, LibTorch 1.13.1, OpenCV 4.6.0, BLAS BLIS (libblis.so.4)");
  // The exact preprocessing, with metadata.json's numbers.
  has("Resize the shorter side to 73 pixels");
  has("Centre-crop 64 x 64");
  has("mean = [0.485, 0.456, 0.406] and std = [0.229, 0.224, 0.225]");
  has("transforms.Resize(73), transforms.CenterCrop(64), transforms.ToTensor()");
  has("transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])");
  has("float32 `[N, 3, 64, 64]`");
  // How to load it: PyTorch, onnxruntime, Triton.
  has("torch.jit.load(\"model.pt\")");
  has("When this download has `model.onnx` (opset 17, written by finetuned-onnx 1");
  has("onnxruntime-node 1.30.0");
  has("session.run([\"logits\", \"features\"], {\"input\": x})");
  has("ftctl models download MODEL --triton-repo models/");
  has("`INPUT__0` TYPE_FP32 dims [3, 64, 64], output `OUTPUT__0` TYPE_FP32 dims [3]");
  has("models/<name>-onnx/1/model.onnx");
  EXPECT_EQ(card.find("no model.onnx"), std::string::npos);
}

TEST(ModelCardTest, SaysWhyThereIsNoOnnxFile) {
  ModelMetadata m = TestedModel();
  m.onnx = OnnxFacts{"", 0, "", "", "aten::grid_sampler has no ONNX mapping"};
  std::string card = ModelCard(m);
  EXPECT_NE(card.find("no model.onnx: aten::grid_sampler has no ONNX mapping"), std::string::npos) << card;
  EXPECT_EQ(card.find("session.run"), std::string::npos);
  EXPECT_EQ(card.find("-onnx/1/model.onnx"), std::string::npos);
  // Without any ONNX facts the card says so too.
  m.onnx.reset();
  card = ModelCard(m);
  EXPECT_NE(card.find("no model.onnx: the worker that trained this model did not export ONNX"), std::string::npos);
  // And metadata.json carries the facts the card shows.
  m.onnx = OnnxFacts{"", 0, "", "", "unsupported op"};
  const nlohmann::json j = nlohmann::json::parse(MetadataJson(m));
  EXPECT_EQ(j["onnx"]["error"], "unsupported op");
  EXPECT_EQ(j["seed"], 42);
  EXPECT_EQ(j["dataset"]["sha256"], std::string(64, 'a'));
  EXPECT_EQ(j["dataset"]["listing_sha256"], std::string(64, 'b'));
  EXPECT_EQ(j["dataset"]["test_images"], 30);
  EXPECT_EQ(j["weights"]["sha256"], std::string(64, 'c'));
  EXPECT_EQ(j["software"]["libtorch"], "1.13.1");
  m.onnx = OnnxFacts{"model.onnx", 17, "c", "onnxruntime-node 1.30.0", ""};
  const nlohmann::json k = nlohmann::json::parse(MetadataJson(m));
  EXPECT_EQ(k["onnx"]["opset"], 17);
  EXPECT_EQ(k["onnx"]["file"], "model.onnx");
  EXPECT_FALSE(k["onnx"].contains("error"));
}

TEST(ModelCardTest, WithoutATestSplitSaysSo) {
  ModelMetadata m = TestedModel();
  m.metrics.set_has_test(false);
  m.metrics.clear_test_per_class();
  m.metrics.clear_test_confusion();
  m.test_images = 0;
  m.test_source.clear();
  m.dataset_sha256.clear();
  m.weights_sha256.clear();
  m.weights_file.clear();
  m.spec.set_weights_uri("none");
  const std::string card = ModelCard(m);
  EXPECT_NE(card.find("The dataset has no test split"), std::string::npos) << card;
  EXPECT_EQ(card.find("| test ("), std::string::npos);
  EXPECT_EQ(card.find("per class"), std::string::npos);
  EXPECT_NE(card.find("Archive sha256: none (a folder, read in place)"), std::string::npos);
  EXPECT_NE(card.find("Weights sha256: none"), std::string::npos);
}

}  // namespace
}  // namespace ft::worker
