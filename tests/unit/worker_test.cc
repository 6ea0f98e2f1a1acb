#include <atomic>
#include <filesystem>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <opencv2/imgcodecs.hpp>

#include <torch/torch.h>

#include "gtest/gtest.h"
#include "worker/backbones/backbone.h"
#include "common/catalog/catalog.h"
#include "worker/data/images.h"
#include "worker/data/loader.h"
#include "worker/train/guards.h"

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

// Colour jitter and rotation: seeded, a grey image stays grey, a uniform
// image stays uniform under jitter, and rotation fills its corners with black.
TEST(ImagesTest, RotationAndColorJitter) {
  constexpr int kSize = 24, kPlane = kSize * kSize;
  cv::Mat rgb(kSize, kSize, CV_8UC3, cv::Scalar(60, 120, 200));
  TransformOptions o;
  o.image_size = kSize;
  o.train = true;
  o.min_scale = 1.0f;
  auto run = [&](const cv::Mat& img, uint64_t seed) {
    std::vector<float> out(3 * kPlane);
    std::mt19937_64 rng(seed);
    TransformInto(img, o, &rng, out.data());
    return out;
  };
  const std::vector<float> plain = run(rgb, 3);
  o.color_jitter = 0.5f;
  const std::vector<float> jittered = run(rgb, 3);
  EXPECT_EQ(jittered, run(rgb, 3));
  EXPECT_NE(jittered, plain);
  for (int c = 0; c < 3; ++c) {
    for (int p = 1; p < kPlane; ++p) ASSERT_FLOAT_EQ(jittered[c * kPlane + p], jittered[c * kPlane]);
  }
  cv::Mat gray(kSize, kSize, CV_8UC1, cv::Scalar(90));
  for (uint64_t seed = 0; seed < 5; ++seed) {
    const std::vector<float> g = run(gray, seed);
    // De-normalised, the three channels hold the same grey level.
    const float r = g[0] * o.std[0] + o.mean[0];
    EXPECT_NEAR(g[kPlane] * o.std[1] + o.mean[1], r, 1e-5);
    EXPECT_NEAR(g[2 * kPlane] * o.std[2] + o.mean[2], r, 1e-5);
  }
  o.color_jitter = 0;
  o.rotation_degrees = 45;
  int black_corners = 0;
  for (uint64_t seed = 0; seed < 8; ++seed) {
    const std::vector<float> rotated = run(rgb, seed);
    EXPECT_EQ(rotated, run(rgb, seed));
    const int centre = (kSize / 2) * kSize + kSize / 2;
    for (int c = 0; c < 3; ++c) EXPECT_FLOAT_EQ(rotated[c * kPlane + centre], plain[c * kPlane + centre]);
    black_corners += std::abs(rotated[0] - (-o.mean[0] / o.std[0])) < 1e-5 ? 1 : 0;
  }
  EXPECT_GT(black_corners, 4);
}

// Images over the decode cache budget are decoded again when used, and the
// batches are the same as with everything cached.
TEST(ImagesTest, DecodeCacheBudgetGivesTheSameBatches) {
  const std::string dir = ::testing::TempDir() + "/decode_budget";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::vector<datasets::Sample> samples;
  cv::RNG noise(5);
  for (int i = 0; i < 6; ++i) {
    cv::Mat img(40, 30, CV_8UC3);
    noise.fill(img, cv::RNG::UNIFORM, 0, 255);
    const std::string path = dir + "/" + std::to_string(i) + ".png";
    ASSERT_TRUE(cv::imwrite(path, img));
    samples.push_back({path, i % 2, -1});
  }
  DecodeOptions d;
  d.max_short_side = 20;  // shrinks 30x40 to 20x26: 1560 bytes each
  auto all = DecodeSamples(samples, d);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->uncached, 0);
  EXPECT_EQ(all->cached_bytes, 6 * 20 * 26 * 3);
  d.cache_budget_bytes = 2 * 20 * 26 * 3;
  auto some = DecodeSamples(samples, d);
  ASSERT_TRUE(some.ok()) << some.status();
  EXPECT_EQ(some->uncached, 4);
  EXPECT_EQ(some->cached_bytes, 2 * 20 * 26 * 3);
  d.cache_budget_bytes = 0;
  // `inspect` sees every image at its decoded size, before the shrink.
  std::atomic<int> inspected{0}, full_size{0};
  d.inspect = [&](size_t, const cv::Mat& img) {
    ++inspected;
    if (img.cols == 30 && img.rows == 40 && img.channels() == 3) ++full_size;
  };
  auto none = DecodeSamples(samples, d);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->uncached, 6);
  EXPECT_EQ(none->cached_bytes, 0);
  EXPECT_EQ(inspected.load(), 6);
  EXPECT_EQ(full_size.load(), 6);
  LoaderOptions lo;
  lo.batch_size = 4;
  lo.transform.image_size = 16;
  lo.transform.train = true;
  lo.threads = 2;
  lo.seed = 7;
  auto batches = [&](const ImageSet& set) {
    BatchLoader loader(&set, {5, 0, 3, 1, 4, 2}, lo);
    std::vector<torch::Tensor> out;
    while (auto b = loader.Next()) out.push_back(b->images);
    return torch::cat(out);
  };
  const torch::Tensor want = batches(*all);
  EXPECT_TRUE(torch::equal(batches(*some), want));
  EXPECT_TRUE(torch::equal(batches(*none), want));
  // A file that disappears mid-job fails the loader with its name, on the
  // trainer's thread.
  std::filesystem::remove(dir + "/3.png");
  BatchLoader loader(&*none, {0, 1, 2, 3, 4, 5}, lo);
  try {
    while (loader.Next()) {
    }
    ADD_FAILURE() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("3.png"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
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


TEST(GuardsTest, PlanBatchesKeepsMergesOrRefuses) {
  const std::string bn = "backbone.layer4.0.bn1";
  // No BatchNorm at 1x1: the batches stay as they are, a last one of 1 too.
  auto plain = PlanBatches(25, 8, "", 32);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->num_batches, 4);
  EXPECT_EQ(plain->last_batch_size, 1);
  EXPECT_FALSE(plain->merged_tail);
  // With one, the last batch of 1 joins the batch before it.
  auto merged = PlanBatches(25, 8, bn, 32);
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_EQ(merged->num_batches, 3);
  EXPECT_EQ(merged->last_batch_size, 9);
  EXPECT_TRUE(merged->merged_tail);
  // Two images at batch 1 more than a multiple; nothing to merge.
  auto even = PlanBatches(24, 8, bn, 32);
  ASSERT_TRUE(even.ok());
  EXPECT_EQ(even->num_batches, 3);
  EXPECT_EQ(even->last_batch_size, 8);
  EXPECT_FALSE(even->merged_tail);
  // One image per class of 3 classes at batch 2: 2 + 1 becomes one batch of 3.
  auto per_class = PlanBatches(3, 2, bn, 32);
  ASSERT_TRUE(per_class.ok());
  EXPECT_EQ(per_class->num_batches, 1);
  EXPECT_EQ(per_class->last_batch_size, 3);
  // Fewer images than a batch: one batch of them all.
  auto small = PlanBatches(5, 8, bn, 32);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(small->num_batches, 1);
  EXPECT_EQ(small->last_batch_size, 5);
  // Batch size 1 asked for: refused before training, naming the layer.
  auto one = PlanBatches(25, 1, bn, 32);
  EXPECT_TRUE(absl::IsInvalidArgument(one.status())) << one.status();
  EXPECT_NE(one.status().message().find("backbone.layer4.0.bn1"), std::string::npos) << one.status();
  EXPECT_NE(one.status().message().find("32 px"), std::string::npos) << one.status();
  EXPECT_NE(one.status().message().find("--batch-size 2"), std::string::npos) << one.status();
  // ... but fine where no BatchNorm sees one value.
  auto one_ok = PlanBatches(25, 1, "", 224);
  ASSERT_TRUE(one_ok.ok());
  EXPECT_EQ(one_ok->num_batches, 25);
  // A training split of a single image cannot be merged anywhere.
  auto single = PlanBatches(1, 8, bn, 32);
  EXPECT_TRUE(absl::IsFailedPrecondition(single.status())) << single.status();
  EXPECT_NE(single.status().message().find("1 image"), std::string::npos) << single.status();
  EXPECT_NE(single.status().message().find(bn), std::string::npos) << single.status();
  EXPECT_TRUE(PlanBatches(1, 8, "", 224).ok());
  EXPECT_FALSE(PlanBatches(0, 8, "", 32).ok());
  EXPECT_FALSE(PlanBatches(10, 0, "", 32).ok());
}

TEST(GuardsTest, LoaderMergesASingleTail) {
  ImageSet set;
  for (int i = 0; i < 25; ++i) {
    set.images.push_back(cv::Mat(8, 8, CV_8UC3, cv::Scalar(i, i, i)));
    set.labels.push_back(i % 5);
    set.paths.push_back("");
  }
  std::vector<int64_t> order(25);
  for (int i = 0; i < 25; ++i) order[static_cast<size_t>(i)] = 24 - i;
  LoaderOptions lo;
  lo.batch_size = 8;
  lo.transform.image_size = 8;
  lo.threads = 2;
  auto sizes = [&](bool merge) {
    lo.merge_single_tail = merge;
    BatchLoader loader(&set, order, lo);
    std::vector<int64_t> out;
    std::vector<int64_t> labels;
    while (auto b = loader.Next()) {
      out.push_back(b->images.size(0));
      for (int64_t i = 0; i < b->labels.size(0); ++i) labels.push_back(b->labels[i].item<int64_t>());
    }
    EXPECT_EQ(static_cast<int64_t>(out.size()), loader.num_batches());
    // Every image once, in order, either way.
    std::vector<int64_t> want;
    for (int64_t idx : order) want.push_back(idx % 5);
    EXPECT_EQ(labels, want);
    return out;
  };
  EXPECT_EQ(sizes(false), (std::vector<int64_t>{8, 8, 8, 1}));
  EXPECT_EQ(sizes(true), (std::vector<int64_t>{8, 8, 9}));
}

TEST(GuardsTest, DivergenceMonitor) {
  // NaN and infinity at once, naming epoch, step, learning rate and advice.
  DivergenceMonitor nan(5);
  ASSERT_TRUE(nan.Observe(1, 1, 1.7, 0.01).ok());
  auto s = nan.Observe(3, 17, std::nan(""), 10.0);
  EXPECT_TRUE(absl::IsFailedPrecondition(s));
  EXPECT_EQ(s.message(), "training diverged at epoch 3, step 17: loss is NaN (learning rate 10; try a lower --lr, or --grad-clip)");
  EXPECT_NE(DivergenceMonitor(5).Observe(1, 1, INFINITY, 1).message().find("loss is infinite"), std::string::npos);
  // A loss that explodes: flagged once the last 10 steps average over 1000x the start.
  DivergenceMonitor boom(10);
  ASSERT_TRUE(boom.Observe(1, 1, 2.4, 10).ok());
  EXPECT_DOUBLE_EQ(boom.reference(), 2.4);
  absl::Status exploded;
  int flagged_at = 0;
  for (int step = 2; step <= 20 && exploded.ok(); ++step) {
    exploded = boom.Observe(1, step, 1e5, 10);
    flagged_at = step;
  }
  EXPECT_FALSE(exploded.ok());
  EXPECT_EQ(flagged_at, 2);  // (2.4 + 1e5) / 2 is already over 2400
  EXPECT_NE(exploded.message().find("over 1000x where training started (2.4)"), std::string::npos) << exploded;
  // A loss that climbs steadily is flagged when its 10-step mean crosses the bar.
  DivergenceMonitor climb(3);
  ASSERT_TRUE(climb.Observe(1, 1, 1.3, 1).ok());
  absl::Status climbed;
  int climbed_at = 1;
  for (double loss = 2; climbed.ok() && climbed_at < 100; loss *= 2) climbed = climb.Observe(1, ++climbed_at, loss, 1);
  EXPECT_FALSE(climbed.ok());
  EXPECT_GT(climbed_at, 10);
  EXPECT_LT(climbed_at, 16);
  // A transient explosion that recovers, as resnet18 from scratch at SGD lr
  // 0.3 does (spikes to 150x its start), is left alone.
  DivergenceMonitor spike(3);
  const std::vector<double> recovering = {1.31, 6.5, 40, 84, 7.3, 76, 56, 35, 9.3, 23, 35, 1.7, 150,
                                          190, 160, 40, 12, 5, 2, 1.2, 0.9, 0.8};
  for (size_t i = 0; i < recovering.size(); ++i) {
    ASSERT_TRUE(spike.Observe(1, static_cast<int64_t>(i + 1), recovering[i], 0.3).ok()) << i;
  }
  // A noisy but healthy run, with one spike, is never flagged.
  DivergenceMonitor healthy(3);
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> noise(0.5, 1.5);
  for (int step = 1; step <= 500; ++step) {
    double loss = 1.1 * noise(rng) * std::exp(-step / 200.0);
    if (step == 50) loss = 9.0;  // one bad batch
    ASSERT_TRUE(healthy.Observe(1 + step / 50, step, loss, 0.01).ok()) << step;
  }
  // A start that is already good (a continued model) is held to ln(classes).
  DivergenceMonitor good(10);
  ASSERT_TRUE(good.Observe(1, 1, 0.01, 0.001).ok());
  EXPECT_DOUBLE_EQ(good.reference(), std::log(10.0));
  for (int step = 2; step <= 10; ++step) ASSERT_TRUE(good.Observe(1, step, 1.5, 0.001).ok());
}

TEST(GuardsTest, SingleValueBatchNormProbeAndNonFiniteTensors) {
  torch::manual_seed(1);
  auto b = BuildBackbone("resnet18");
  ASSERT_TRUE(b.ok()) << b.status();
  auto model = BuildClassifier(b->module, b->feature_dim, {"a", "b"});
  EXPECT_EQ(FirstNonFiniteTensor(model), std::nullopt);
  std::vector<torch::Tensor> before;
  for (const auto& t : model.buffers()) before.push_back(t.clone());
  ApplyFreeze(model, *b, 0);
  // At 32 px ResNet's layer4 runs at 1x1; at 64 px at 2x2.
  torch::manual_seed(9);
  auto probe = SingleValueBatchNorm(model, 32);
  const torch::Tensor next_random = torch::rand({4});
  ASSERT_TRUE(probe.ok()) << probe.status();
  EXPECT_EQ(*probe, "backbone.layer4.0.bn1");
  // Buffers and the random stream are as they were.
  size_t i = 0;
  for (const auto& t : model.buffers()) EXPECT_TRUE(torch::equal(t, before[i++]));
  torch::manual_seed(9);
  EXPECT_TRUE(torch::equal(torch::rand({4}), next_random));
  auto at64 = SingleValueBatchNorm(model, 64);
  ASSERT_TRUE(at64.ok());
  EXPECT_EQ(*at64, "");
  // Frozen stages keep their BatchNorm in eval mode: nothing sees one value.
  ApplyFreeze(model, *b, -1);
  EXPECT_EQ(*SingleValueBatchNorm(model, 32), "");
  ApplyFreeze(model, *b, 4);  // stem..layer3 frozen, layer4 trains
  EXPECT_EQ(*SingleValueBatchNorm(model, 32), "backbone.layer4.0.bn1");
  // Another family: MobileNet V2's last stages are 1x1 at 32 px.
  auto mb = BuildBackbone("mobilenet_v2");
  ASSERT_TRUE(mb.ok());
  auto mobile = BuildClassifier(mb->module, mb->feature_dim, {"a", "b"});
  ApplyFreeze(mobile, *mb, 0);
  auto mprobe = SingleValueBatchNorm(mobile, 32);
  ASSERT_TRUE(mprobe.ok()) << mprobe.status();
  EXPECT_NE(*mprobe, "");
  EXPECT_EQ(*SingleValueBatchNorm(mobile, 64), "");

  // The first non-finite tensor is named, parameters and buffers alike.
  torch::NoGradGuard no_grad;
  auto bb = model.attr("backbone").toModule();
  bb.attr("layer4").toModule().attr("1").toModule().attr("bn2").toModule().attr("running_var").toTensor()[3] = NAN;
  EXPECT_EQ(FirstNonFiniteTensor(model), "backbone.layer4.1.bn2.running_var holds NaN");
  model.attr("head").toModule().attr("weight").toTensor()[0][0] = INFINITY;
  EXPECT_EQ(FirstNonFiniteTensor(model), "head.weight holds an infinity");
}

}  // namespace
}  // namespace ft::worker
