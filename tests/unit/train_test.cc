#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <iostream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <opencv2/imgcodecs.hpp>

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/util/clock.h"
#include "gtest/gtest.h"
#include "tests/unit/test_dirs.h"
#include "worker/backbones/backbone.h"
#include "worker/data/images.h"
#include "worker/data/loader.h"
#include "worker/train/checkpoint.h"
#include "worker/train/evaluation.h"
#include "worker/train/frozen_prefix.h"
#include "worker/backbones/jit_modules.h"
#include "worker/train/guards.h"
#include "worker/train/job_data.h"
#include "worker/train/recipe.h"
#include "worker/train/sync_batch_norm.h"
#include "worker/train/torch_process.h"
#include "worker/train/trainer.h"

namespace ft::worker {
namespace {

// The frozen stages as an inference graph (BatchNorm folded) stay within
// 1e-5 relative of the module that trains, for a partial prefix and for the
// whole backbone, and leave that module working and unchanged.
TEST(FrozenPrefixTest, MatchesTheUnfoldedStages) {
  ft::worker::InitTorchProcess(2);  // as in the worker: calls are not inlined
  for (const std::string name : {"resnet18", "mobilenet_v3_small", "vgg11_bn", "efficientnet_b0", "convnext_tiny"}) {
    SCOPED_TRACE(name);
    torch::manual_seed(1);
    auto backbone = ft::worker::BuildBackbone(name);
    ASSERT_TRUE(backbone.ok()) << backbone.status();
    // Running statistics that folding has to honour.
    {
      torch::NoGradGuard no_grad;
      for (const auto& b : backbone->module.named_buffers()) {
        if (b.name.find("running_mean") != std::string::npos) b.value.uniform_(-0.5, 0.5);
        if (b.name.find("running_var") != std::string::npos) b.value.uniform_(0.5, 2.0);
      }
    }
    auto model = ft::worker::BuildClassifier(backbone->module, backbone->feature_dim, {"a", "b", "c"});
    model.eval();
    const auto x = torch::randn({4, 3, 64, 64});
    const int n = static_cast<int>(backbone->stages.size());
    for (int stages : {n - 1, -1}) {
      std::string unoptimised;
      auto prefix = ft::worker::BuildFrozenPrefix(model, stages, 64, &unoptimised);
      ASSERT_TRUE(prefix.ok()) << prefix.status();
      // Where oneDNN gets the optimised graph wrong on this CPU, the graph
      // falls back to frozen alone, and says so; ResNet's is always right.
      if (!unoptimised.empty()) std::cout << name << ", " << stages << " stages: " << unoptimised << std::endl;
      if (name == "resnet18") {
        EXPECT_EQ(unoptimised, "");
      }
      torch::NoGradGuard no_grad;
      auto want = stages < 0 ? model.get_method("features")({x}).toTensor()
                             : model.attr("backbone").toModule().get_method(ft::worker::kForwardStages)(
                                   {x, 0, stages}).toTensor();
      auto got = prefix->forward({x}).toTensor();
      ASSERT_EQ(got.sizes(), want.sizes());
      const double rel = (got - want).abs().max().item<double>() / want.abs().max().item<double>();
      EXPECT_LT(rel, 1e-5) << stages << " stages";
    }
    // The model still runs, as it did.
    torch::NoGradGuard no_grad;
    EXPECT_EQ(model.forward({x}).toTensor().size(1), 3);
  }
}

// sync_bn's swapped-in forward on one rank (no gang: the sum is over one)
// is torch.nn.BatchNorm2d: the same outputs, running statistics and
// gradients in training mode, the same eval forward, and after Restore the
// layer's own forward again, with no finetuned op left in the model.
TEST(SyncBatchNormTest, OneRankComputesWhatBatchNormDoes) {
  ft::worker::InitTorchProcess(2);
  using ft::worker::BatchNorm2d;
  using ft::worker::Conv2d;
  torch::manual_seed(2);
  auto make = [] { return ft::worker::Sequential({Conv2d(3, 4, 3, {}), BatchNorm2d(4, 1e-3, 0.2)}); };
  torch::jit::Module plain = make();
  torch::jit::Module synced = make();
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : plain.named_parameters()) synced.attr(p.name.substr(0, 1)).toModule()
        .attr(p.name.substr(2)).toTensor().copy_(p.value);
  }
  auto sync = ft::worker::SyncBatchNorm::Install(synced, nullptr);
  ASSERT_TRUE(sync.ok()) << sync.status();
  EXPECT_EQ((*sync)->layers(), 1);
  plain.train();
  synced.train();
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE(step);
    const auto x = torch::randn({5, 3, 9, 9}) * 2 + 1;
    const auto w = torch::randn({5, 4, 7, 7});
    auto y1 = plain.forward({x}).toTensor();
    auto y2 = synced.forward({x}).toTensor();
    EXPECT_TRUE(torch::allclose(y1, y2, 1e-4, 1e-5)) << (y1 - y2).abs().max().item<double>();
    (y1 * w).sum().backward();
    (y2 * w).sum().backward();
    std::map<std::string, torch::Tensor> p2, b2;
    for (const auto& p : synced.named_parameters()) p2[p.name] = p.value;
    for (const auto& b : synced.named_buffers()) b2[b.name] = b.value;
    for (const auto& p : plain.named_parameters()) {
      const auto g2 = p2.at(p.name).grad();
      EXPECT_TRUE(torch::allclose(p.value.grad(), g2, 1e-4, 1e-5))
          << p.name << ": " << (p.value.grad() - g2).abs().max().item<double>();
    }
    for (const auto& b : plain.named_buffers()) {
      EXPECT_TRUE(torch::allclose(b.value.to(torch::kDouble), b2.at(b.name).to(torch::kDouble), 1e-5, 1e-6))
          << b.name;
    }
  }
  (*sync)->Restore();
  // In any block (the training branch is an If's).
  std::function<bool(const torch::jit::Block*)> calls_gang = [&](const torch::jit::Block* block) {
    for (const torch::jit::Node* node : block->nodes()) {
      if (std::string(node->kind().toQualString()) == "ft::gang_all_reduce_sum") return true;
      for (const torch::jit::Block* inner : node->blocks()) {
        if (calls_gang(inner)) return true;
      }
    }
    return false;
  };
  const auto uses_gang = [&](const torch::jit::Module& m) {
    for (const auto& sub : m.modules()) {
      if (calls_gang(torch::jit::toGraphFunction(sub.type()->getMethod("forward")).graph()->block())) return true;
    }
    return false;
  };
  EXPECT_FALSE(uses_gang(synced));
  plain.eval();
  synced.eval();
  const auto x = torch::randn({2, 3, 9, 9});
  EXPECT_TRUE(torch::allclose(plain.forward({x}).toTensor(), synced.forward({x}).toTensor(), 1e-5, 1e-6));
  // Swapped in again, the op is there (the check above can fail).
  auto again = ft::worker::SyncBatchNorm::Install(synced, nullptr);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(uses_gang(synced));
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

// A multi-worker job splits every batch between its ranks (SplitShare): a
// last batch that would leave a rank empty, or with one image where a
// BatchNorm sees one value, joins the batch before it.
TEST(GuardsTest, PlanBatchesForSeveralWorkers) {
  const std::string bn = "backbone.layer4.0.bn1";
  using Share = std::pair<int64_t, int64_t>;
  EXPECT_EQ(SplitShare(7, 0, 2), Share(0, 3));
  EXPECT_EQ(SplitShare(7, 1, 2), Share(3, 7));
  EXPECT_EQ(SplitShare(8, 2, 3), Share(5, 8));
  // 26 images at 8 on 4 workers: a last batch of 2 leaves two ranks empty.
  auto empty = PlanBatches(26, 8, "", 224, /*ranks=*/4);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->num_batches, 3);
  EXPECT_EQ(empty->last_batch_size, 10);
  EXPECT_TRUE(empty->merged_tail);
  // 28: a last batch of 4, one image each: fine without such a BatchNorm...
  auto one_each = PlanBatches(28, 8, "", 224, 4);
  ASSERT_TRUE(one_each.ok());
  EXPECT_EQ(one_each->num_batches, 4);
  EXPECT_FALSE(one_each->merged_tail);
  // ... merged with one.
  auto merged = PlanBatches(28, 8, bn, 32, 4);
  ASSERT_TRUE(merged.ok());
  EXPECT_EQ(merged->num_batches, 3);
  EXPECT_EQ(merged->last_batch_size, 12);
  // Too few images, or too small a batch, for every rank to have a share.
  EXPECT_TRUE(absl::IsFailedPrecondition(PlanBatches(3, 8, "", 224, 4).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(PlanBatches(100, 6, bn, 32, 4).status()));
  // One rank: as before.
  EXPECT_EQ(PlanBatches(25, 8, bn, 32, 1)->num_batches, 3);
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

TEST(GuardsTest, DivergenceMonitorStateCarriesOver) {
  // A monitor given another's state (a resumed job) decides as that one
  // would: the same reference and the same 10-step window.
  DivergenceMonitor first(3);
  for (int step = 1; step <= 12; ++step) ASSERT_TRUE(first.Observe(1, step, 1.0 + step * 0.1, 0.1).ok());
  DivergenceMonitor resumed(3);
  resumed.set_state(first.state());
  EXPECT_EQ(resumed.reference(), first.reference());
  EXPECT_EQ(resumed.state().window, first.state().window);
  EXPECT_EQ(resumed.state().window_sum, first.state().window_sum);
  // Over 1000x the start (1.1) in the mean of the last 10 steps; a fresh
  // monitor would take it for its start and let it pass.
  const double jump = 11000;
  const absl::Status a = first.Observe(1, 13, jump, 0.1);
  EXPECT_FALSE(a.ok());
  EXPECT_EQ(resumed.Observe(1, 13, jump, 0.1), a);
  EXPECT_TRUE(DivergenceMonitor(3).Observe(1, 1, jump, 0.1).ok());
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

pb::JobSpec BaseSpec() {
  pb::JobSpec spec;
  spec.set_backbone("resnet18");
  spec.set_epochs(10);
  spec.set_batch_size(4);
  spec.set_image_size(32);
  spec.set_learning_rate(0.1f);
  return spec;
}

TEST(RecipeTest, ParsesTheOptionsOnceAndRefusesUnknownOnes) {
  pb::JobSpec spec = BaseSpec();
  auto defaults = Recipe::Create(spec);
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->options().optimizer, spec::Optimizer::kAdam);
  EXPECT_EQ(defaults->options().lr_schedule, spec::LrSchedule::kConstant);
  EXPECT_FALSE(defaults->skips_bad_images());
  EXPECT_FALSE(defaults->exports_last_epoch());
  spec.set_on_bad_image("skip");
  spec.set_export_weights("last");
  auto set = Recipe::Create(spec);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_TRUE(set->skips_bad_images());
  EXPECT_TRUE(set->exports_last_epoch());
  spec.set_optimizer("rmsprop");
  auto bad = Recipe::Create(spec);
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status())) << bad.status();
  EXPECT_EQ(bad.status().message(), "optimizer: unknown optimizer 'rmsprop'; known: adam, adamw, sgd");
}

TEST(RecipeTest, OptimizerFromTheEnum) {
  torch::Tensor w = torch::zeros({2}, torch::requires_grad());
  pb::JobSpec spec = BaseSpec();
  spec.set_weight_decay(0.5f);
  spec.set_momentum(0.8f);
  spec.set_nesterov(true);
  for (const char* name : {"sgd", "adamw", "adam", ""}) {
    SCOPED_TRACE(name);
    spec.set_optimizer(name);
    auto recipe = Recipe::Create(spec);
    ASSERT_TRUE(recipe.ok()) << recipe.status();
    std::unique_ptr<torch::optim::Optimizer> opt = recipe->MakeOptimizer({w}, 0.25);
    ASSERT_EQ(opt->param_groups().size(), 1u);
    EXPECT_DOUBLE_EQ(opt->param_groups()[0].options().get_lr(), 0.25);
    if (std::string(name) == "sgd") {
      auto* sgd = dynamic_cast<torch::optim::SGD*>(opt.get());
      ASSERT_NE(sgd, nullptr);
      const auto& o = static_cast<const torch::optim::SGDOptions&>(sgd->param_groups()[0].options());
      EXPECT_FLOAT_EQ(o.momentum(), 0.8f);
      EXPECT_TRUE(o.nesterov());
      EXPECT_FLOAT_EQ(o.weight_decay(), 0.5f);
    } else if (std::string(name) == "adamw") {
      auto* adamw = dynamic_cast<torch::optim::AdamW*>(opt.get());
      ASSERT_NE(adamw, nullptr);
      EXPECT_FLOAT_EQ(static_cast<const torch::optim::AdamWOptions&>(adamw->param_groups()[0].options()).weight_decay(),
                      0.5f);
    } else {
      auto* adam = dynamic_cast<torch::optim::Adam*>(opt.get());
      ASSERT_NE(adam, nullptr);
      EXPECT_FLOAT_EQ(static_cast<const torch::optim::AdamOptions&>(adam->param_groups()[0].options()).weight_decay(),
                      0.5f);
    }
  }
}

TEST(RecipeTest, LearningRateSchedules) {
  pb::JobSpec spec = BaseSpec();
  auto constant = Recipe::Create(spec);
  ASSERT_TRUE(constant.ok());
  EXPECT_DOUBLE_EQ(constant->LearningRateAt(0, 0.1), 0.1);
  EXPECT_DOUBLE_EQ(constant->LearningRateAt(7.5, 0.1), 0.1);

  spec.set_lr_schedule("step");
  spec.set_lr_step_epochs(3);
  spec.set_lr_gamma(0.5f);
  auto step = Recipe::Create(spec);
  ASSERT_TRUE(step.ok());
  EXPECT_DOUBLE_EQ(step->LearningRateAt(2.99, 0.1), 0.1);
  EXPECT_DOUBLE_EQ(step->LearningRateAt(3, 0.1), 0.05);
  EXPECT_DOUBLE_EQ(step->LearningRateAt(6.5, 0.1), 0.025);

  spec.set_lr_schedule("cosine");
  auto cosine = Recipe::Create(spec);
  ASSERT_TRUE(cosine.ok());
  EXPECT_DOUBLE_EQ(cosine->LearningRateAt(0, 0.1), 0.1);
  EXPECT_NEAR(cosine->LearningRateAt(5, 0.1), 0.05, 1e-12);
  EXPECT_NEAR(cosine->LearningRateAt(10, 0.1), 0, 1e-12);

  // Linear warm-up first, from 1e-3 of an epoch; the cosine spans the rest.
  spec.set_warmup_epochs(2);
  auto warm = Recipe::Create(spec);
  ASSERT_TRUE(warm.ok());
  EXPECT_DOUBLE_EQ(warm->LearningRateAt(0, 0.1), 0.1 * 1e-3 / 2);
  EXPECT_DOUBLE_EQ(warm->LearningRateAt(1, 0.1), 0.05);
  EXPECT_DOUBLE_EQ(warm->LearningRateAt(2, 0.1), 0.1);
  EXPECT_NEAR(warm->LearningRateAt(6, 0.1), 0.05, 1e-12);
}

TEST(RecipeTest, PhasesTransformsAndFeatureCaching) {
  pb::JobSpec spec = BaseSpec();
  spec.set_epochs(5);
  spec.set_freeze_depth(-1);
  spec.set_unfreeze_at(3);
  spec.set_finetune_freeze_depth(2);
  spec.set_finetune_lr_mult(0.1f);
  auto two = Recipe::Create(spec);
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->first_phase().freeze_depth, -1);
  EXPECT_DOUBLE_EQ(two->first_phase().base_lr, 0.1f);
  EXPECT_EQ(two->finetune_phase().freeze_depth, 2);
  EXPECT_DOUBLE_EQ(two->finetune_phase().base_lr, 0.1f * 0.1f);
  EXPECT_FALSE(two->StartsFineTuning(2));
  EXPECT_TRUE(two->StartsFineTuning(3));
  EXPECT_TRUE(two->HasFineTuning());
  EXPECT_EQ(two->FirstPhaseEpochs(), 2);
  // A second phase never caches: its stages unfreeze.
  spec.set_augment("none");
  EXPECT_FALSE(Recipe::Create(spec)->CachesFeatures(5));
  spec.set_unfreeze_at(0);
  EXPECT_EQ(Recipe::Create(spec)->FirstPhaseEpochs(), 5);
  EXPECT_FALSE(Recipe::Create(spec)->HasFineTuning());
  EXPECT_TRUE(Recipe::Create(spec)->CachesFeatures(5));
  spec.set_freeze_depth(5);
  EXPECT_TRUE(Recipe::Create(spec)->CachesFeatures(5));
  spec.set_freeze_depth(4);
  EXPECT_FALSE(Recipe::Create(spec)->CachesFeatures(5));
  spec.set_freeze_depth(-1);
  spec.set_cache_features("off");
  EXPECT_FALSE(Recipe::Create(spec)->CachesFeatures(5));
  spec.set_cache_features("on");
  spec.set_augment("light");
  EXPECT_FALSE(Recipe::Create(spec)->CachesFeatures(5));

  Normalization norm;
  norm.mean = {0.5f, 0.5f, 0.5f};
  spec.set_color_jitter(0.25f);
  const TransformOptions light = Recipe::Create(spec)->TrainTransform(norm);
  EXPECT_TRUE(light.train);
  EXPECT_FLOAT_EQ(light.min_scale, 0.5f);
  EXPECT_FLOAT_EQ(light.color_jitter, 0.25f);
  EXPECT_EQ(light.image_size, 32);
  EXPECT_EQ(light.mean, norm.mean);
  spec.set_augment("standard");
  EXPECT_FLOAT_EQ(Recipe::Create(spec)->TrainTransform(norm).min_scale, 0.08f);
  spec.set_augment("none");
  EXPECT_FALSE(Recipe::Create(spec)->TrainTransform(norm).train);
}

TEST(RecipeTest, NormalisationAndBalancedClassWeights) {
  std::vector<std::string> logs;
  TrainerHooks hooks;
  hooks.on_log = [&logs](const std::string& level, const std::string& message) {
    logs.push_back(level + ": " + message);
  };
  const Reporter report(hooks);
  pb::JobSpec spec = BaseSpec();
  spec.set_label_smoothing(0.1f);
  auto plain = Recipe::Create(spec);
  ASSERT_TRUE(plain.ok());
  auto unweighted = plain->LossOptions({0, 0, 0, 1}, 2, torch::kCPU, report);
  EXPECT_FALSE(unweighted.weight().defined());
  EXPECT_FLOAT_EQ(unweighted.label_smoothing(), 0.1f);
  EXPECT_TRUE(logs.empty());
  spec.set_class_weights("balanced");
  auto balanced = Recipe::Create(spec)->LossOptions({0, 0, 0, 1}, 2, torch::kCPU, report);
  ASSERT_TRUE(balanced.weight().defined());
  EXPECT_FLOAT_EQ(balanced.weight()[0].item<float>(), 4.0f / 6.0f);
  EXPECT_FLOAT_EQ(balanced.weight()[1].item<float>(), 2.0f);
  ASSERT_EQ(logs.size(), 1u);
  EXPECT_EQ(logs[0], "info: balanced class weights, from 1 to 3 images per class");

  // The job's mean and std win over the weights', which win over ImageNet's.
  Normalization from_weights;
  from_weights.mean = {0.1f, 0.2f, 0.3f};
  from_weights.source = "the weights";
  auto norm = plain->ChooseNormalization(from_weights, report);
  ASSERT_TRUE(norm.ok());
  EXPECT_EQ(norm->source, "the weights");
  EXPECT_EQ(plain->ChooseNormalization(std::nullopt, report)->mean, Normalization().mean);
  for (float v : {0.5f, 0.5f, 0.5f}) spec.add_mean(v);
  for (float v : {0.25f, 0.25f, 0.25f}) spec.add_std(v);
  auto own = Recipe::Create(spec)->ChooseNormalization(from_weights, report);
  ASSERT_TRUE(own.ok());
  EXPECT_EQ(own->source, "the job's mean and std");
  EXPECT_FLOAT_EQ(own->std[1], 0.25f);
  EXPECT_EQ(logs.back(),
            "info: input normalisation: mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25] (from the job's mean and std)");
  spec.set_std(1, 0);
  EXPECT_TRUE(absl::IsFailedPrecondition(Recipe::Create(spec)->ChooseNormalization(from_weights, report).status()));
}

TEST(EvaluationTest, TopKLossConfusionAndClassMetrics) {
  // Rows: true 0 -> 0, true 1 -> 2 (1 second), true 2 -> 2, true 0 -> 1.
  const torch::Tensor logits = torch::tensor({{3.0f, 1.0f, 0.0f},
                                              {0.0f, 1.0f, 2.0f},
                                              {0.0f, 0.5f, 4.0f},
                                              {1.0f, 2.0f, 0.0f}});
  const torch::Tensor labels = torch::tensor({0, 1, 2, 0}, torch::kInt64);
  Evaluator eval(3);
  eval.Add(logits.slice(0, 0, 2), labels.slice(0, 0, 2));
  eval.Add(logits.slice(0, 2, 4), labels.slice(0, 2, 4));
  const EvalResult r = eval.Result();
  EXPECT_DOUBLE_EQ(r.top1, 0.5);
  EXPECT_DOUBLE_EQ(r.top5, 1.0);  // k is min(5, classes)
  EXPECT_NEAR(r.loss, torch::nn::functional::cross_entropy(logits, labels).item<double>(), 1e-6);
  pb::JobMetrics m;
  FillClassMetrics(r, {"a", "b", "c"}, &m);
  ASSERT_EQ(m.test_per_class_size(), 3);
  EXPECT_EQ(m.test_per_class(0).name(), "a");
  EXPECT_FLOAT_EQ(m.test_per_class(0).precision(), 1.0f);
  EXPECT_FLOAT_EQ(m.test_per_class(0).recall(), 0.5f);
  EXPECT_FLOAT_EQ(m.test_per_class(0).f1(), 2.0f / 3.0f);
  EXPECT_EQ(m.test_per_class(0).support(), 2);
  EXPECT_FLOAT_EQ(m.test_per_class(1).precision(), 0.0f);
  EXPECT_FLOAT_EQ(m.test_per_class(1).f1(), 0.0f);
  EXPECT_FLOAT_EQ(m.test_per_class(2).precision(), 0.5f);
  EXPECT_FLOAT_EQ(m.test_per_class(2).recall(), 1.0f);
  EXPECT_EQ(std::vector<int64_t>(m.test_confusion().begin(), m.test_confusion().end()),
            (std::vector<int64_t>{1, 1, 0, 0, 0, 1, 0, 0, 1}));
  EXPECT_EQ(Evaluator(2).Result().top1, 0);
}

TEST(EvaluationTest, RanksShareWholeBatchesOfTheOneWorkerPass) {
  struct Case {
    int64_t n, batch;
    bool merge;
    int ranks;
    std::vector<std::pair<int64_t, int64_t>> want;
  };
  for (const Case& c : std::vector<Case>{
           {90, 64, false, 2, {{0, 64}, {64, 90}}},
           {129, 64, true, 2, {{0, 64}, {64, 129}}},  // the tail of one rides with the batch before
           {129, 64, false, 2, {{0, 64}, {64, 129}}},
           {10, 64, false, 2, {{0, 0}, {0, 10}}},  // one batch: rank 0 has none
           {1000, 64, false, 3, {{0, 320}, {320, 640}, {640, 1000}}},
           {0, 64, false, 2, {{0, 0}, {0, 0}}},
       }) {
    SCOPED_TRACE(absl::StrCat(c.n, " images in batches of ", c.batch, " over ", c.ranks, " ranks"));
    for (int r = 0; r < c.ranks; ++r) {
      const EvalRange got = RankShareOfBatches(c.n, c.batch, c.merge, r, c.ranks);
      EXPECT_EQ(std::make_pair(got.begin, got.end), c.want[static_cast<size_t>(r)]) << "rank " << r;
    }
  }
}

TEST(EvaluationTest, SharesOfTheBatchesCombineToTheWholePass) {
  // 70 noise images, batches of 16; a fixed linear "model" on the pixels.
  torch::manual_seed(3);
  ImageSet set;
  cv::RNG rng(5);
  for (int i = 0; i < 70; ++i) {
    cv::Mat m(12, 12, CV_8UC3);
    rng.fill(m, cv::RNG::UNIFORM, 0, 256);
    set.images.push_back(m);
    set.labels.push_back(i % 4);
    set.paths.push_back("");
  }
  LoaderOptions options;
  options.batch_size = 16;
  options.transform.image_size = 8;
  const torch::Tensor weight = torch::randn({4, 3 * 8 * 8});
  const auto logits = [&](const torch::Tensor& x) { return torch::matmul(x.flatten(1), weight.t()); };
  const EvalResult whole = Evaluate(set, options, torch::kCPU, 4, logits);
  // Each of 3 ranks packs its share; the all-reduce sums the packs.
  torch::Tensor summed;
  int64_t images = 0;
  for (int r = 0; r < 3; ++r) {
    const EvalRange range = RankShareOfBatches(70, 16, false, r, 3);
    const EvalResult share = Evaluate(set, options, torch::kCPU, 4, logits, range);
    images += share.images;
    const torch::Tensor packed = PackShare(share, range, 70, 4);
    summed = summed.defined() ? summed + packed : packed;
  }
  EXPECT_EQ(images, 70);
  const EvalResult combined = UnpackShares(summed, 70, 4);
  EXPECT_EQ(combined.images, 70);
  EXPECT_NEAR(combined.loss, whole.loss, 1e-12 * std::abs(whole.loss));
  EXPECT_EQ(combined.top1, whole.top1);
  EXPECT_EQ(combined.top5, whole.top5);
  EXPECT_TRUE(torch::equal(combined.confusion, whole.confusion));
  ASSERT_EQ(combined.predictions.size(), whole.predictions.size());
  for (size_t i = 0; i < whole.predictions.size(); ++i) {
    EXPECT_EQ(combined.predictions[i].label, whole.predictions[i].label) << i;
    EXPECT_EQ(combined.predictions[i].predicted, whole.predictions[i].predicted) << i;
    EXPECT_EQ(combined.predictions[i].confidence, whole.predictions[i].confidence) << i;
  }
}

TEST(EvaluationTest, MisclassifiedPicksSpreadOverClassesMostConfidentFirst) {
  // Class 0: three mistakes (confidence 0.5, 0.9, 0.7); class 1: one; class 2: none.
  const std::vector<Prediction> p = {{0, 1, 0.5f}, {0, 0, 0.99f}, {0, 2, 0.9f}, {1, 0, 0.6f},
                                     {0, 1, 0.7f}, {2, 2, 0.8f}, {1, 1, 0.9f}};
  EXPECT_EQ(PickMisclassified(p, 24), (std::vector<size_t>{2, 3, 4, 0}));
  EXPECT_EQ(PickMisclassified(p, 2), (std::vector<size_t>{2, 3}));
  EXPECT_EQ(PickMisclassified(p, 0), (std::vector<size_t>{}));
  EXPECT_EQ(PickMisclassified({{0, 0, 1.0f}}, 24), (std::vector<size_t>{}));
}

TEST(EvaluationTest, ThumbnailIsAJpegWithItsLongerSideAt96) {
  for (const auto& [rows, cols, type] : std::vector<std::tuple<int, int, int>>{
           {36, 36, CV_8UC3}, {28, 28, CV_8UC1}, {300, 200, CV_8UC3}}) {
    cv::Mat image(rows, cols, type, cv::Scalar(200, 30, 30));
    auto jpeg = ThumbnailJpeg(image, kThumbnailSide);
    ASSERT_TRUE(jpeg.ok()) << jpeg.status();
    EXPECT_LT(jpeg->size(), 8000u);
    cv::Mat decoded = cv::imdecode(std::vector<uchar>(jpeg->begin(), jpeg->end()), cv::IMREAD_UNCHANGED);
    ASSERT_FALSE(decoded.empty());
    EXPECT_EQ(std::max(decoded.rows, decoded.cols), kThumbnailSide);
    EXPECT_EQ(decoded.rows * cols, decoded.cols * rows);
    if (type == CV_8UC3) {
      // RGB in, so red stays red (OpenCV writes BGR).
      const cv::Vec3b bgr = decoded.at<cv::Vec3b>(decoded.rows / 2, decoded.cols / 2);
      EXPECT_GT(bgr[2], 150);
      EXPECT_LT(bgr[0], 80);
    }
  }
  EXPECT_FALSE(ThumbnailJpeg(cv::Mat(), kThumbnailSide).ok());
}

// A whole job through RunTraining, on a small ImageFolder of two colours.
// The worker holds a dataset to the roots the server resolved it with,
// before it reads a file: its own folder unless ResolvedJob names roots.
TEST(JobDataTest, ScanJobDatasetKeepsTheServersSandbox) {
  const std::filesystem::path dir = ft::testing::FreshTestDir("ft-jobdata");
  const std::filesystem::path set = dir / "roots/set";
  ft::testing::WriteTinyImageFolder(dir / "roots/images");
  std::filesystem::create_directories(set);
  std::ofstream(set / "manifest.csv") << "path,label\n../images/a/0.png,a\n../images/a/1.png,a\n"
                                         "../images/b/0.png,b\n../images/b/1.png,b\n";
  pb::ResolvedJob job;
  job.set_dataset_path(set.string());
  job.mutable_spec()->set_val_split(0.5f);
  auto own_folder = ScanJobDataset(job);
  EXPECT_TRUE(absl::IsPermissionDenied(own_folder.status())) << own_folder.status();
  EXPECT_NE(own_folder.status().message().find("line 2: \"../images/a/0.png\" resolves outside the dataset's folder"),
            std::string::npos)
      << own_folder.status();
  job.add_dataset_roots((dir / "roots").string());
  auto in_roots = ScanJobDataset(job);
  ASSERT_TRUE(in_roots.ok()) << in_roots.status();
  EXPECT_EQ(in_roots->train.size() + in_roots->val.size(), 4u);
  // A file swapped for a link out after the server's check.
  std::filesystem::remove(dir / "roots/images/b/1.png");
  std::filesystem::create_symlink("/etc/passwd", dir / "roots/images/b/1.png");
  auto swapped = ScanJobDataset(job);
  EXPECT_TRUE(absl::IsPermissionDenied(swapped.status())) << swapped.status();
  EXPECT_NE(swapped.status().message().find("line 5: \"../images/b/1.png\""), std::string::npos) << swapped.status();
  std::filesystem::remove_all(dir);
}

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    InitTorchProcess(2);
    // Per process: other checkouts on this machine run this test too.
    dir_ = ft::testing::FreshTestDir("ft-trainer").string();
    cv::RNG noise(11);
    for (const char* split : {"train", "val"}) {
      for (int c = 0; c < 2; ++c) {
        const std::string folder = dir_ + "/" + split + "/class" + std::to_string(c);
        std::filesystem::create_directories(folder);
        for (int i = 0; i < (std::string(split) == "train" ? 10 : 4); ++i) {
          cv::Mat img(24, 24, CV_8UC3, c == 0 ? cv::Scalar(200, 40, 40) : cv::Scalar(40, 40, 200));
          cv::Mat jitter(24, 24, CV_8UC3);
          noise.fill(jitter, cv::RNG::UNIFORM, 0, 40);
          img += jitter;
          ASSERT_TRUE(cv::imwrite(folder + "/" + std::to_string(i) + ".png", img));
        }
      }
    }
    job_.set_dataset_path(dir_);
    job_.set_dataset_format("imagefolder");
    pb::JobSpec* spec = job_.mutable_spec();
    spec->set_backbone("resnet18");
    spec->set_freeze_depth(3);
    spec->set_epochs(2);
    spec->set_batch_size(4);
    spec->set_image_size(32);
    spec->set_learning_rate(0.01f);
    spec->set_val_split(0.2f);
    spec->set_seed(5);
    spec->set_lr_schedule("cosine");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string dir_;
  pb::ResolvedJob job_;
};

TEST_F(TrainerTest, TrainsTheSameTwiceAndDescribesTheModel) {
  std::vector<std::string> phases;
  int epochs = 0;
  TrainerHooks hooks;
  hooks.on_progress = [&phases](const pb::Progress& p) {
    if (phases.empty() || phases.back() != p.phase()) phases.push_back(p.phase());
  };
  hooks.on_epoch = [&epochs](const pb::EpochSummary&) { ++epochs; };
  TrainerOptions options;
  options.job_id = "j1";
  options.loader_threads = 2;
  auto first = RunTraining(job_, options, hooks);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->cancelled);
  EXPECT_EQ(phases, (std::vector<std::string>{"load", "train", "validate", "train", "validate"}));
  EXPECT_EQ(epochs, 2);
  EXPECT_EQ(first->metrics.epochs_completed(), 2);
  EXPECT_EQ(first->metrics.trained_images(), 40);
  EXPECT_NE(first->metadata_json.find("\"job_id\": \"j1\""), std::string::npos) << first->metadata_json;
  EXPECT_NE(first->metadata_json.find("\"classes\": [\n    \"class0\",\n    \"class1\"\n  ]"), std::string::npos)
      << first->metadata_json;
  EXPECT_TRUE(first->model.hasattr("mean"));

  // Data order, augmentation and initialisation are functions of the seed.
  auto second = RunTraining(job_, options, {});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->metrics.val_loss(), first->metrics.val_loss());
  EXPECT_EQ(second->metrics.train_loss(), first->metrics.train_loss());
  EXPECT_EQ(second->metrics.best_epoch(), first->metrics.best_epoch());
  auto a = first->model.parameters().begin();
  for (const auto& p : second->model.parameters()) {
    EXPECT_TRUE(torch::equal(p, *a));
    ++a;
  }
}

TEST_F(TrainerTest, UnknownOptionFailsBeforeAnyWork) {
  job_.mutable_spec()->set_lr_schedule("linear");
  int events = 0;
  TrainerHooks hooks;
  hooks.on_progress = [&events](const pb::Progress&) { ++events; };
  auto r = RunTraining(job_, TrainerOptions(), hooks);
  EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
  EXPECT_EQ(r.status().message(), "lr_schedule: unknown schedule 'linear'; known: constant, step, cosine");
  EXPECT_EQ(events, 0);
}

TEST_F(TrainerTest, CancelledBetweenSteps) {
  int steps = 0;
  TrainerHooks hooks;
  hooks.on_step = [&steps](double, int64_t) { ++steps; };
  hooks.cancelled = [&steps] { return steps >= 2; };
  auto r = RunTraining(job_, TrainerOptions(), hooks);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->cancelled);
  EXPECT_EQ(steps, 2);
}


// A small ImageFolder of two colours at `dir`: 10 training and 4
// validation images per class. With `swap_val`, the validation images of
// each class have the other class's colour, so that the validation loss
// grows as training succeeds (and early stopping stops).
void WriteTwoColours(const std::string& dir, bool swap_val) {
  std::filesystem::remove_all(dir);
  cv::RNG noise(11);
  for (const char* split : {"train", "val"}) {
    const bool val = std::string(split) == "val";
    for (int c = 0; c < 2; ++c) {
      const std::string folder = dir + "/" + split + "/class" + std::to_string(c);
      std::filesystem::create_directories(folder);
      const bool red = (c == 0) != (val && swap_val);
      for (int i = 0; i < (val ? 4 : 10); ++i) {
        cv::Mat img(24, 24, CV_8UC3, red ? cv::Scalar(200, 40, 40) : cv::Scalar(40, 40, 200));
        cv::Mat jitter(24, 24, CV_8UC3);
        noise.fill(jitter, cv::RNG::UNIFORM, 0, 40);
        img += jitter;
        ASSERT_TRUE(cv::imwrite(folder + "/" + std::to_string(i) + ".png", img));
      }
    }
  }
}

// Checkpoints and resume: a job stopped at any step boundary and resumed
// from its checkpoint in a new trainer, any number of times, ends
// bit-identical to the same job run in one go.
class ResumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    InitTorchProcess(2);
    dir_ = ft::testing::FreshTestDir("ft-resume").string();
    WriteTwoColours(dir_, /*swap_val=*/false);
    job_.set_dataset_path(dir_);
    job_.set_dataset_format("imagefolder");
    pb::JobSpec* spec = job_.mutable_spec();
    spec->set_backbone("resnet18");
    spec->set_freeze_depth(3);
    spec->set_epochs(3);
    spec->set_batch_size(4);  // 20 training images: 5 steps an epoch
    spec->set_image_size(32);
    spec->set_learning_rate(0.01f);
    spec->set_seed(5);
    spec->set_lr_schedule("cosine");
    options_.job_id = "j1";
    options_.loader_threads = 2;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  struct Stored {
    CheckpointPosition at;
    std::string bytes;  // when kept
  };
  struct Outcome {
    absl::StatusOr<TrainResult> result = absl::UnknownError("not run");
    // Over all attempts: the epoch summaries as sent, the checkpoints as stored, the logs.
    std::vector<pb::EpochSummary> epochs;
    std::vector<Stored> checkpoints;
    std::vector<std::string> logs;
    int attempts = 0;
  };

  // Runs the job to its end. Once the job has done each of `preempt_at`
  // steps (counted over the whole run), it is preempted and resumed from its
  // newest checkpoint by a new RunTraining. `keep` says which checkpoints'
  // bytes to keep in the outcome; `on_step` runs after each step.
  Outcome Train(const std::vector<int64_t>& preempt_at, TrainerOptions options,
                const std::function<bool(const CheckpointPosition&)>& keep = nullptr,
                const std::function<void()>& on_step = nullptr) {
    Outcome out;
    int64_t steps = 0;
    size_t next = 0;
    std::string newest = options.resume;
    TrainerHooks hooks;
    hooks.on_step = [&](double, int64_t) {
      ++steps;
      if (on_step) on_step();
    };
    hooks.on_epoch = [&](const pb::EpochSummary& s) { out.epochs.push_back(s); };
    hooks.on_log = [&](const std::string& level, const std::string& m) { out.logs.push_back(level + ": " + m); };
    hooks.preempted = [&] { return next < preempt_at.size() && steps >= preempt_at[next]; };
    hooks.save_checkpoint = [&](const CheckpointPosition& at, const std::string& bytes) {
      out.checkpoints.push_back({at, keep && keep(at) ? bytes : ""});
      newest = bytes;
      return absl::OkStatus();
    };
    while (out.attempts < 20) {
      ++out.attempts;
      options.resume = newest;
      absl::StatusOr<TrainResult> r = RunTraining(job_, options, hooks);
      if (r.ok() && r->preempted) {
        EXPECT_EQ(steps, preempt_at[next]) << "a preemption stops at the step boundary it is asked at";
        ++next;
        continue;
      }
      out.result = std::move(r);
      break;
    }
    EXPECT_EQ(next, preempt_at.size()) << "every preemption happened";
    return out;
  }

  bool Logged(const Outcome& out, const std::string& line) {
    return std::find(out.logs.begin(), out.logs.end(), line) != out.logs.end();
  }

  std::string dir_;
  pb::ResolvedJob job_;
  TrainerOptions options_;
};

// Every parameter and buffer equal, the metrics equal, and the epochs'
// summaries equal but for their timings.
void ExpectSameJob(const TrainResult& got, const TrainResult& want) {
  auto names = [](const torch::jit::Module& m) {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (const auto& p : m.named_parameters(true)) out.emplace_back(p.name, p.value);
    for (const auto& b : m.named_buffers(true)) out.emplace_back(b.name, b.value);
    return out;
  };
  const auto g = names(got.model);
  const auto w = names(want.model);
  ASSERT_EQ(g.size(), w.size());
  int differ = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    EXPECT_EQ(g[i].first, w[i].first);
    if (!torch::equal(g[i].second, w[i].second)) {
      ADD_FAILURE() << g[i].first << " differs";
      if (++differ > 3) break;
    }
  }
  EXPECT_EQ(got.metrics.SerializeAsString(), want.metrics.SerializeAsString())
      << got.metrics.DebugString() << "\nvs\n" << want.metrics.DebugString();
}

void ExpectSameEpochs(const std::vector<pb::EpochSummary>& got, const std::vector<pb::EpochSummary>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    pb::EpochSummary a = got[i], b = want[i];
    for (pb::EpochSummary* s : {&a, &b}) {
      s->clear_images_per_second();
      s->clear_epoch_seconds();
      s->clear_loader_wait_seconds();
    }
    EXPECT_EQ(a.SerializeAsString(), b.SerializeAsString()) << a.DebugString() << "\nvs\n" << b.DebugString();
    EXPECT_EQ(got[i].epoch(), static_cast<int>(i) + 1) << "each epoch's summary once, in order";
  }
}

TEST_F(ResumeTest, AdamStoppedMidEpochAtAnEpochEndAndAgain) {
  const Outcome once = Train({}, options_);
  ASSERT_TRUE(once.result.ok()) << once.result.status();
  EXPECT_EQ(once.attempts, 1);
  // Each epoch end, and nothing else at the default interval of 300 s.
  ASSERT_EQ(once.checkpoints.size(), 3u);
  for (int e = 0; e < 3; ++e) {
    EXPECT_EQ(once.checkpoints[e].at.epoch, e + 1);
    EXPECT_EQ(once.checkpoints[e].at.step, 5);
    EXPECT_TRUE(once.checkpoints[e].at.epoch_end);
  }
  // Checkpointing changes nothing that is trained.
  auto plain = RunTraining(job_, options_, {});
  ASSERT_TRUE(plain.ok()) << plain.status();
  ExpectSameJob(*plain, *once.result);

  // Mid-epoch (step 3 of epoch 1), at the end of epoch 1 (step 5: it stops
  // before epoch 2's first step), mid-epoch 2, and mid-epoch 3.
  const Outcome stopped = Train({3, 5, 7, 13}, options_);
  ASSERT_TRUE(stopped.result.ok()) << stopped.result.status();
  EXPECT_EQ(stopped.attempts, 5);
  ExpectSameJob(*stopped.result, *once.result);
  ExpectSameEpochs(stopped.epochs, once.epochs);
  EXPECT_TRUE(Logged(stopped, "info: resumed from checkpoint at epoch 1, step 3"));
  EXPECT_TRUE(Logged(stopped, "info: resumed from checkpoint at epoch 1, step 5"));
  EXPECT_TRUE(Logged(stopped, "info: resumed from checkpoint at epoch 2, step 2"));
  EXPECT_TRUE(Logged(stopped, "info: resumed from checkpoint at epoch 3, step 3"));
  // The preemption at an epoch end needs no checkpoint of its own.
  std::vector<std::string> where;
  for (const Stored& c : stopped.checkpoints) {
    where.push_back(absl::StrCat(c.at.epoch, ":", c.at.step, c.at.epoch_end ? "e" : ""));
  }
  EXPECT_EQ(where, (std::vector<std::string>{"1:3", "1:5e", "2:2", "2:5e", "3:3", "3:5e"}));
  EXPECT_EQ(stopped.result->metadata_json.find("\"resume"), std::string::npos);
  // Each epoch's curve holds every step's loss and rate (compared above
  // across the resumes too): the mean of 5 equal batches is the epoch's
  // loss, and the cosine schedule falls within the epoch.
  for (const pb::EpochSummary& e : once.epochs) {
    ASSERT_EQ(e.steps(), 5);
    EXPECT_EQ(e.steps_per_point(), 1);
    ASSERT_EQ(e.step_losses_size(), 5);
    ASSERT_EQ(e.step_learning_rates_size(), 5);
    double sum = 0;
    for (float l : e.step_losses()) sum += l;
    EXPECT_NEAR(sum / 5, e.train_loss(), 1e-5);
    EXPECT_FLOAT_EQ(e.step_learning_rates(4), e.learning_rate());
    for (int i = 1; i < 5; ++i) EXPECT_LT(e.step_learning_rates(i), e.step_learning_rates(i - 1));
  }
}

// Past max_step_points steps an epoch, a point is the mean of a window of
// steps; a resume in the middle of a window ends with the same points.
TEST_F(ResumeTest, StepCurveWindowsAcrossAResume) {
  options_.max_step_points = 2;  // 5 steps: windows of 3 and 2
  const Outcome once = Train({}, options_);
  ASSERT_TRUE(once.result.ok()) << once.result.status();
  ASSERT_EQ(once.epochs.size(), 3u);
  for (const pb::EpochSummary& e : once.epochs) {
    EXPECT_EQ(e.steps_per_point(), 3);
    ASSERT_EQ(e.step_losses_size(), 2);
    EXPECT_NEAR((3 * e.step_losses(0) + 2 * e.step_losses(1)) / 5, e.train_loss(), 1e-5);
  }
  const Outcome stopped = Train({2, 9}, options_);  // epoch 1 step 2, epoch 2 step 4
  ASSERT_TRUE(stopped.result.ok()) << stopped.result.status();
  ExpectSameJob(*stopped.result, *once.result);
  ExpectSameEpochs(stopped.epochs, once.epochs);
}

TEST_F(ResumeTest, SgdWithMomentumAcrossTheFineTuningPhase) {
  pb::JobSpec* spec = job_.mutable_spec();
  spec->set_optimizer("sgd");
  spec->set_momentum(0.9f);
  spec->set_nesterov(true);
  spec->set_weight_decay(1e-4f);
  spec->set_freeze_depth(-1);
  spec->set_unfreeze_at(2);
  spec->set_finetune_freeze_depth(3);
  spec->set_finetune_lr_mult(0.1f);
  spec->set_grad_clip_norm(5.0f);
  const Outcome once = Train({}, options_);
  ASSERT_TRUE(once.result.ok()) << once.result.status();
  // At the end of the first phase (its optimiser is not carried into the
  // second), mid-way through the second phase's first epoch, and in its last.
  const Outcome stopped = Train({5, 7, 11, 14}, options_);
  ASSERT_TRUE(stopped.result.ok()) << stopped.result.status();
  ExpectSameJob(*stopped.result, *once.result);
  ExpectSameEpochs(stopped.epochs, once.epochs);
  ASSERT_EQ(stopped.epochs.size(), 3u);
  EXPECT_EQ(stopped.epochs[0].freeze_depth(), -1);
  EXPECT_EQ(stopped.epochs[1].freeze_depth(), 3);
  EXPECT_TRUE(Logged(stopped, "info: resumed from checkpoint at epoch 2, step 2"));
}

TEST_F(ResumeTest, DropoutAndColourJitter) {
  // MobileNet V3's hidden classifier layer has dropout, which draws from
  // the torch generator at every step; the crops, flips, rotations and
  // jitter are drawn per image.
  pb::JobSpec* spec = job_.mutable_spec();
  spec->set_backbone("mobilenet_v3_small");
  spec->set_freeze_depth(0);
  spec->set_epochs(2);
  spec->set_optimizer("adamw");
  spec->set_augment("standard");
  spec->set_color_jitter(0.4f);
  spec->set_rotation_degrees(15);
  spec->set_label_smoothing(0.1f);
  const Outcome once = Train({}, options_);
  ASSERT_TRUE(once.result.ok()) << once.result.status();
  const Outcome stopped = Train({2, 4, 6, 9}, options_);
  ASSERT_TRUE(stopped.result.ok()) << stopped.result.status();
  ExpectSameJob(*stopped.result, *once.result);
  ExpectSameEpochs(stopped.epochs, once.epochs);
}

TEST_F(ResumeTest, CachedFeatures) {
  pb::JobSpec* spec = job_.mutable_spec();
  spec->set_freeze_depth(-1);
  spec->set_augment("none");
  const Outcome once = Train({}, options_);
  ASSERT_TRUE(once.result.ok()) << once.result.status();
  ASSERT_FALSE(once.epochs.empty());
  EXPECT_TRUE(once.epochs[0].features_cached());
  const Outcome stopped = Train({1, 5, 9, 14}, options_);
  ASSERT_TRUE(stopped.result.ok()) << stopped.result.status();
  ExpectSameJob(*stopped.result, *once.result);
  ExpectSameEpochs(stopped.epochs, once.epochs);
  EXPECT_TRUE(Logged(stopped, "info: resumed from checkpoint at epoch 3, step 4"));
}

TEST_F(ResumeTest, ExportBestWithEarlyStopping) {
  WriteTwoColours(dir_, /*swap_val=*/true);
  pb::JobSpec* spec = job_.mutable_spec();
  spec->set_epochs(8);
  spec->set_early_stopping_patience(2);
  spec->set_learning_rate(0.003f);
  spec->set_lr_schedule("constant");
  const Outcome once = Train({}, options_, [](const CheckpointPosition& at) { return at.epoch_end; });
  ASSERT_TRUE(once.result.ok()) << once.result.status();
  // The validation loss worsens as training learns the colours: the job
  // stops early and exports an earlier epoch than its last.
  const pb::JobMetrics& m = once.result->metrics;
  ASSERT_LT(m.epochs_completed(), 8);
  ASSERT_LT(m.best_epoch(), m.epochs_completed());
  const Outcome stopped = Train({2, 5, 8, 11}, options_);
  ASSERT_TRUE(stopped.result.ok()) << stopped.result.status();
  ExpectSameJob(*stopped.result, *once.result);
  ExpectSameEpochs(stopped.epochs, once.epochs);
  // Resumed from the last epoch end (after which it stopped early), it
  // trains nothing and exports the best epoch's weights, kept in the checkpoint.
  ASSERT_FALSE(once.checkpoints.empty());
  const Stored& final_checkpoint = once.checkpoints.back();
  EXPECT_TRUE(final_checkpoint.at.epoch_end);
  EXPECT_EQ(final_checkpoint.at.epoch, m.epochs_completed());
  TrainerOptions from_last = options_;
  from_last.resume = final_checkpoint.bytes;
  const Outcome tail = Train({}, from_last);
  ASSERT_TRUE(tail.result.ok()) << tail.result.status();
  EXPECT_TRUE(tail.epochs.empty());
  EXPECT_TRUE(tail.checkpoints.empty());
  ExpectSameJob(*tail.result, *once.result);
}

TEST_F(ResumeTest, IntervalCheckpointsAndAKillAfterThem) {
  // A clock that moves one second a step: with an interval of 2 s, a
  // checkpoint every second step within an epoch.
  util::FakeClock clock;
  TrainerOptions options = options_;
  options.clock = &clock;
  job_.mutable_spec()->set_checkpoint_interval_seconds(2);
  job_.mutable_spec()->set_epochs(2);
  auto tick = [&clock] { clock.Advance(absl::Seconds(1)); };
  auto mid = [](const CheckpointPosition& at) { return !at.epoch_end; };
  const Outcome once = Train({}, options, mid, tick);
  ASSERT_TRUE(once.result.ok()) << once.result.status();
  std::vector<std::string> where;
  for (const Stored& c : once.checkpoints) where.push_back(absl::StrCat(c.at.epoch, ":", c.at.step, c.at.epoch_end ? "e" : ""));
  EXPECT_EQ(where, (std::vector<std::string>{"1:2", "1:4", "1:5e", "2:2", "2:4", "2:5e"}));
  // Killed any time after a checkpoint: the next attempt resumes from it and
  // trains the steps after it again, to the same end.
  for (const Stored& c : once.checkpoints) {
    if (c.bytes.empty()) continue;
    SCOPED_TRACE(absl::StrCat("from epoch ", c.at.epoch, ", step ", c.at.step));
    TrainerOptions from = options;
    from.resume = c.bytes;
    const Outcome resumed = Train({}, from, nullptr, tick);
    ASSERT_TRUE(resumed.result.ok()) << resumed.result.status();
    ExpectSameJob(*resumed.result, *once.result);
    ASSERT_FALSE(resumed.epochs.empty());
    EXPECT_EQ(resumed.epochs.front().epoch(), c.at.epoch);
  }
  // Without an interval (0), epoch ends only.
  job_.mutable_spec()->set_checkpoint_interval_seconds(0);
  const Outcome ends = Train({}, options, nullptr, tick);
  ASSERT_TRUE(ends.result.ok());
  EXPECT_EQ(ends.checkpoints.size(), 2u);
  ExpectSameJob(*ends.result, *once.result);
}

TEST_F(ResumeTest, RefusesAnotherJobsCheckpointAndDamagedBytes) {
  job_.mutable_spec()->set_epochs(1);
  const Outcome once = Train({}, options_, [](const CheckpointPosition&) { return true; });
  ASSERT_TRUE(once.result.ok()) << once.result.status();
  ASSERT_EQ(once.checkpoints.size(), 1u);
  const std::string bytes = once.checkpoints[0].bytes;
  RecordProperty("resnet18_32px_adam_checkpoint_bytes", std::to_string(bytes.size()));
  auto info = InspectCheckpoint(bytes);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->format, kCheckpointFormat);
  EXPECT_EQ(info->position.epoch, 1);
  EXPECT_EQ(info->position.step, 5);
  EXPECT_TRUE(info->position.epoch_end);

  // Another spec (a seed), another job id, other data: refused before training.
  auto refused = [&](const pb::ResolvedJob& job, const TrainerOptions& options) {
    TrainerOptions with = options;
    with.resume = bytes;
    int epochs = 0;
    TrainerHooks hooks;
    hooks.on_epoch = [&epochs](const pb::EpochSummary&) { ++epochs; };
    auto r = RunTraining(job, with, hooks);
    EXPECT_EQ(epochs, 0);
    return r.status();
  };
  pb::ResolvedJob other_seed = job_;
  other_seed.mutable_spec()->set_seed(6);
  const absl::Status seed = refused(other_seed, options_);
  EXPECT_TRUE(absl::IsFailedPrecondition(seed)) << seed;
  EXPECT_NE(seed.message().find("another job, spec or dataset"), std::string::npos) << seed;
  TrainerOptions other_job = options_;
  other_job.job_id = "j2";
  EXPECT_TRUE(absl::IsFailedPrecondition(refused(job_, other_job)));
  pb::ResolvedJob same_but_interval = job_;
  same_but_interval.mutable_spec()->set_checkpoint_interval_seconds(60);
  EXPECT_TRUE(refused(same_but_interval, options_).ok()) << "the interval changes nothing trained";
  std::filesystem::remove(dir_ + "/train/class0/3.png");
  EXPECT_TRUE(absl::IsFailedPrecondition(refused(job_, options_)));
  WriteTwoColours(dir_, /*swap_val=*/false);

  // Truncated, damaged or not a checkpoint at all: DATA_LOSS, naming it.
  for (const std::string& bad : {bytes.substr(0, bytes.size() / 2), bytes.substr(0, 100), std::string("hello"),
                                 std::string()}) {
    const absl::Status inspected = InspectCheckpoint(bad).status();
    EXPECT_TRUE(absl::IsDataLoss(inspected)) << inspected;
    EXPECT_NE(inspected.message().find("the checkpoint does not parse"), std::string::npos) << inspected;
    TrainerOptions with = options_;
    with.resume = bad;
    if (bad.empty()) continue;  // empty means: start afresh
    const absl::Status trained = RunTraining(job_, with, {}).status();
    EXPECT_TRUE(absl::IsDataLoss(trained)) << trained;
  }
}

TEST_F(ResumeTest, AnEpochWhoseCheckpointIsNotStoredIsNeverReported) {
  util::FakeClock clock;
  TrainerOptions options = options_;
  options.clock = &clock;
  job_.mutable_spec()->set_checkpoint_interval_seconds(2);
  int epochs = 0;
  std::vector<std::string> warnings;
  TrainerHooks hooks;
  hooks.on_step = [&clock](double, int64_t) { clock.Advance(absl::Seconds(1)); };
  hooks.on_epoch = [&epochs](const pb::EpochSummary&) { ++epochs; };
  hooks.on_log = [&warnings](const std::string& level, const std::string& m) {
    if (level == "warning") warnings.push_back(m);
  };
  // Mid-epoch failures are warnings; an epoch end's fails the job before its summary.
  hooks.save_checkpoint = [](const CheckpointPosition& at, const std::string&) {
    return absl::ResourceExhaustedError(at.epoch_end ? "no space left on device (/var/checkpoints)" : "busy");
  };
  auto r = RunTraining(job_, options, hooks);
  EXPECT_TRUE(absl::IsResourceExhausted(r.status())) << r.status();
  EXPECT_EQ(r.status().message(),
            "the checkpoint of epoch 1 could not be stored: no space left on device (/var/checkpoints)");
  EXPECT_EQ(epochs, 0);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_EQ(warnings[0], "the checkpoint at epoch 1, step 2 could not be stored; training goes on: busy");

  // Preempted before the first step: nothing to store, nothing trained.
  int saved = 0;
  TrainerHooks early;
  early.preempted = [] { return true; };
  early.save_checkpoint = [&saved](const CheckpointPosition&, const std::string&) {
    ++saved;
    return absl::OkStatus();
  };
  auto stopped = RunTraining(job_, options_, early);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_TRUE(stopped->preempted);
  EXPECT_EQ(saved, 0);
}

}  // namespace
}  // namespace ft::worker
