#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <opencv2/imgcodecs.hpp>

#include <torch/torch.h>

#include "gtest/gtest.h"
#include "worker/data/images.h"
#include "worker/data/loader.h"

namespace ft::worker {
namespace {

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

// The loader side of PlanBatches (worker/train/guards.h): a last batch of
// one image joins the batch before it when asked.
TEST(LoaderTest, MergesASingleTail) {
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

// A multi-worker job: each rank's loader makes its share of every batch,
// and the shares, side by side, are the one-worker batch, augmentation and
// all (each image's random stream follows its place in the epoch).
TEST(LoaderTest, ShardsAreTheOneWorkerBatchSplit) {
  ImageSet set;
  cv::RNG noise(5);
  for (int i = 0; i < 23; ++i) {
    cv::Mat img(12, 10, CV_8UC3);
    noise.fill(img, cv::RNG::UNIFORM, 0, 255);
    set.images.push_back(img);
    set.labels.push_back(i % 4);
    set.paths.push_back("");
  }
  std::vector<int64_t> order(23);
  for (int i = 0; i < 23; ++i) order[static_cast<size_t>(i)] = (i * 5) % 23;
  LoaderOptions lo;
  lo.batch_size = 6;
  lo.transform.image_size = 8;
  lo.transform.train = true;
  lo.transform.color_jitter = 0.4f;
  lo.threads = 2;
  lo.seed = 7;
  lo.merge_tail = true;  // 23 = 6 + 6 + 11
  auto pass = [&](int shard, int shards) {
    lo.shard = shard;
    lo.shards = shards;
    BatchLoader loader(&set, order, lo);
    std::vector<Batch> out;
    while (auto b = loader.Next()) out.push_back(*std::move(b));
    return out;
  };
  const std::vector<Batch> whole = pass(0, 1);
  ASSERT_EQ(whole.size(), 3u);
  EXPECT_EQ(whole[2].images.size(0), 11);
  std::vector<std::vector<Batch>> ranks = {pass(0, 3), pass(1, 3), pass(2, 3)};
  for (size_t b = 0; b < whole.size(); ++b) {
    std::vector<torch::Tensor> images, labels;
    for (const auto& r : ranks) {
      ASSERT_EQ(r.size(), whole.size());
      EXPECT_EQ(r[b].global_size, whole[b].images.size(0));
      EXPECT_GE(r[b].images.size(0), 2);
      images.push_back(r[b].images);
      labels.push_back(r[b].labels);
    }
    EXPECT_TRUE(torch::equal(torch::cat(images), whole[b].images)) << "batch " << b;
    EXPECT_TRUE(torch::equal(torch::cat(labels), whole[b].labels)) << "batch " << b;
  }
}

// A resumed epoch: a pass from batch k gives exactly the batches k... of a
// pass from the start (augmentation included), and never makes the ones
// before it.
TEST(LoaderTest, StartsAtABatchWithoutMakingTheOnesBefore) {
  ImageSet set;
  cv::RNG noise(3);
  for (int i = 0; i < 22; ++i) {
    cv::Mat img(12, 10, CV_8UC3);
    noise.fill(img, cv::RNG::UNIFORM, 0, 255);
    set.images.push_back(img);
    set.labels.push_back(i % 3);
    set.paths.push_back("");
  }
  std::vector<int64_t> order(22);
  for (int i = 0; i < 22; ++i) order[static_cast<size_t>(i)] = (i * 7) % 22;
  LoaderOptions lo;
  lo.batch_size = 4;
  lo.transform.image_size = 8;
  lo.transform.train = true;
  lo.transform.color_jitter = 0.4f;
  lo.threads = 3;
  lo.seed = 11;
  lo.merge_single_tail = true;
  auto pass = [&](int64_t first) {
    lo.first_batch = first;
    BatchLoader loader(&set, order, lo);
    std::vector<Batch> out;
    while (auto b = loader.Next()) out.push_back(*std::move(b));
    return out;
  };
  const std::vector<Batch> whole = pass(0);
  ASSERT_EQ(whole.size(), 6u);  // 22 = 5 x 4 + 2
  for (int64_t first : {1, 4, 5}) {
    SCOPED_TRACE(first);
    const std::vector<Batch> rest = pass(first);
    ASSERT_EQ(static_cast<int64_t>(rest.size()), 6 - first);
    for (size_t i = 0; i < rest.size(); ++i) {
      EXPECT_TRUE(torch::equal(rest[i].images, whole[static_cast<size_t>(first) + i].images));
      EXPECT_TRUE(torch::equal(rest[i].labels, whole[static_cast<size_t>(first) + i].labels));
    }
  }
  EXPECT_TRUE(pass(6).empty());
  // The skipped batches are not made: their images may be gone.
  ImageSet holes = set;
  holes.images[static_cast<size_t>(order[0])] = cv::Mat();
  holes.paths[static_cast<size_t>(order[0])] = "/nonexistent/skipped.png";
  lo.first_batch = 1;
  BatchLoader loader(&holes, order, lo);
  int64_t batches = 0;
  while (loader.Next()) ++batches;
  EXPECT_EQ(batches, 5);
}

}  // namespace
}  // namespace ft::worker
