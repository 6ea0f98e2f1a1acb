// The fused optimizers (worker/train/fused_optimizers.h) against LibTorch's
// own Adam, AdamW and SGD: the same steps to float rounding, the same state
// (a checkpoint of one loads in the other), the same bits whatever the thread
// count, and LibTorch's own step where they cannot fuse.
#include "worker/train/fused_optimizers.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

namespace ft::worker {
namespace {

using MakeOptimizer = std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<torch::Tensor>)>;

// Parameters of a few shapes, large enough to split across threads.
std::vector<torch::Tensor> Parameters(uint64_t seed) {
  torch::manual_seed(seed);
  return {torch::randn({512, 256, 3, 3}).requires_grad_(), torch::randn({512}).requires_grad_(),
          torch::randn({10, 512}).requires_grad_(), torch::randn({7}).requires_grad_()};
}

// `steps` steps on gradients drawn from `seed`, the same for every optimizer.
void Train(torch::optim::Optimizer& optimizer, const std::vector<torch::Tensor>& params, int steps, uint64_t seed) {
  torch::manual_seed(seed);
  for (int i = 0; i < steps; ++i) {
    for (const auto& p : params) p.mutable_grad() = torch::randn_like(p) * (i % 2 ? 0.01 : 1.0);
    optimizer.step();
  }
}

std::vector<torch::Tensor> Copy(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> out;
  for (const auto& p : params) out.push_back(p.detach().clone().requires_grad_());
  return out;
}

// Largest |a - b| / (|b| + 0.1) over every element: relative for the
// parameters' usual size (about 1 here), absolute near 0, where a rounding
// difference of an earlier step is not scaled down with the value.
double LargestRelativeDifference(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, ((a[i] - b[i]).abs() / (b[i].abs() + 0.1)).max().item<double>());
  }
  return worst;
}

struct Case {
  std::string name;
  MakeOptimizer fused;
  MakeOptimizer reference;
};

std::vector<Case> Cases() {
  using torch::optim::AdamOptions;
  using torch::optim::AdamWOptions;
  using torch::optim::SGDOptions;
  return {
      {"adam", [](auto p) { return std::make_unique<FusedAdam>(p, AdamOptions(1e-3)); },
       [](auto p) { return std::make_unique<torch::optim::Adam>(p, AdamOptions(1e-3)); }},
      {"adam_weight_decay", [](auto p) { return std::make_unique<FusedAdam>(p, AdamOptions(3e-3).weight_decay(1e-2)); },
       [](auto p) { return std::make_unique<torch::optim::Adam>(p, AdamOptions(3e-3).weight_decay(1e-2)); }},
      {"adamw", [](auto p) { return std::make_unique<FusedAdamW>(p, AdamWOptions(1e-3).weight_decay(5e-2)); },
       [](auto p) { return std::make_unique<torch::optim::AdamW>(p, AdamWOptions(1e-3).weight_decay(5e-2)); }},
      {"sgd_momentum",
       [](auto p) { return std::make_unique<FusedSGD>(p, SGDOptions(0.05).momentum(0.9).weight_decay(1e-4)); },
       [](auto p) {
         return std::make_unique<torch::optim::SGD>(p, SGDOptions(0.05).momentum(0.9).weight_decay(1e-4));
       }},
      {"sgd_nesterov",
       [](auto p) { return std::make_unique<FusedSGD>(p, SGDOptions(0.05).momentum(0.9).nesterov(true)); },
       [](auto p) { return std::make_unique<torch::optim::SGD>(p, SGDOptions(0.05).momentum(0.9).nesterov(true)); }},
      {"sgd_dampening",
       [](auto p) { return std::make_unique<FusedSGD>(p, SGDOptions(0.05).momentum(0.5).dampening(0.3)); },
       [](auto p) { return std::make_unique<torch::optim::SGD>(p, SGDOptions(0.05).momentum(0.5).dampening(0.3)); }},
      {"sgd_plain", [](auto p) { return std::make_unique<FusedSGD>(p, SGDOptions(0.05)); },
       [](auto p) { return std::make_unique<torch::optim::SGD>(p, SGDOptions(0.05)); }},
  };
}

class FusedOptimizerTest : public ::testing::TestWithParam<Case> {};

TEST_P(FusedOptimizerTest, StepsAsLibTorchDoesToFloatRounding) {
  const auto start = Parameters(1);
  auto ours = Copy(start), theirs = Copy(start);
  auto fused = GetParam().fused(ours);
  auto reference = GetParam().reference(theirs);
  Train(*fused, ours, 6, 7);
  Train(*reference, theirs, 6, 7);
  const double moved = LargestRelativeDifference(theirs, start);
  EXPECT_GT(moved, 1e-3) << "the steps changed nothing";
  std::cout << GetParam().name << ": moved " << moved << ", from LibTorch's " << LargestRelativeDifference(ours, theirs)
            << "\n";
  EXPECT_LT(LargestRelativeDifference(ours, theirs), 1e-5);
}

TEST_P(FusedOptimizerTest, ItsStateIsLibTorchsBothWays) {
  // Three steps of LibTorch's, saved; loaded into a fused one for three
  // more; against six of LibTorch's. And the other way round.
  for (bool fused_first : {false, true}) {
    SCOPED_TRACE(fused_first ? "fused, then LibTorch" : "LibTorch, then fused");
    const auto start = Parameters(2);
    auto params = Copy(start), reference_params = Copy(start);
    auto first = fused_first ? GetParam().fused(params) : GetParam().reference(params);
    torch::manual_seed(11);
    std::vector<torch::Tensor> grads;
    for (int i = 0; i < 6; ++i) {
      for (const auto& p : start) grads.push_back(torch::randn_like(p));
    }
    auto run = [&](torch::optim::Optimizer& o, const std::vector<torch::Tensor>& ps, int from, int to) {
      for (int i = from; i < to; ++i) {
        for (size_t j = 0; j < ps.size(); ++j) ps[j].mutable_grad() = grads[i * ps.size() + j];
        o.step();
      }
    };
    run(*first, params, 0, 3);
    std::stringstream saved;
    {
      torch::serialize::OutputArchive archive;
      first->save(archive);
      archive.save_to(saved);
    }
    auto second = fused_first ? GetParam().reference(params) : GetParam().fused(params);
    {
      torch::serialize::InputArchive archive;
      archive.load_from(saved);
      second->load(archive);
    }
    EXPECT_EQ(second->state().size(), first->state().size());
    run(*second, params, 3, 6);
    auto reference = GetParam().reference(reference_params);
    run(*reference, reference_params, 0, 6);
    EXPECT_LT(LargestRelativeDifference(params, reference_params), 1e-5);
  }
}

TEST_P(FusedOptimizerTest, TheSameBitsOnOneThreadAsOnFour) {
  const int threads = at::get_num_threads();
  const auto start = Parameters(3);
  auto one = Copy(start), four = Copy(start);
  at::set_num_threads(1);
  auto a = GetParam().fused(one);
  Train(*a, one, 4, 5);
  at::set_num_threads(4);
  auto b = GetParam().fused(four);
  Train(*b, four, 4, 5);
  at::set_num_threads(threads);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(torch::equal(one[i], four[i])) << i;
}

INSTANTIATE_TEST_SUITE_P(Optimizers, FusedOptimizerTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

TEST(FusedOptimizerFallbackTest, ANonContiguousParameterTakesLibTorchsStepExactly) {
  torch::manual_seed(4);
  const torch::Tensor start = torch::randn({64, 32}).t();  // not contiguous
  ASSERT_FALSE(start.is_contiguous());
  torch::Tensor ours = start.clone().t().contiguous().t().requires_grad_();
  torch::Tensor theirs = ours.detach().clone().t().contiguous().t().requires_grad_();
  ASSERT_FALSE(ours.is_contiguous());
  FusedAdam fused({ours}, torch::optim::AdamOptions(1e-2));
  torch::optim::Adam reference({theirs}, torch::optim::AdamOptions(1e-2));
  Train(fused, {ours}, 3, 9);
  Train(reference, {theirs}, 3, 9);
  EXPECT_TRUE(torch::equal(ours, theirs));
  EXPECT_FALSE(torch::equal(ours, start));
}

}  // namespace
}  // namespace ft::worker
