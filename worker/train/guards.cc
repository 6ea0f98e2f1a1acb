#include "worker/train/guards.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ft::worker {
namespace {

std::string Describe(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "infinite" : "-infinite";
  return absl::StrFormat("%.4g", value);
}

// Saves a generator's state and puts it back when destroyed.
class GeneratorStateGuard {
 public:
  explicit GeneratorStateGuard(at::Generator generator) : generator_(std::move(generator)) {
    std::lock_guard<std::mutex> lock(generator_.mutex());
    state_ = generator_.get_state();
  }
  ~GeneratorStateGuard() {
    std::lock_guard<std::mutex> lock(generator_.mutex());
    generator_.set_state(state_);
  }
  GeneratorStateGuard(const GeneratorStateGuard&) = delete;
  GeneratorStateGuard& operator=(const GeneratorStateGuard&) = delete;

 private:
  at::Generator generator_;
  at::Tensor state_;
};

}  // namespace

absl::StatusOr<BatchPlan> PlanBatches(int64_t images, int64_t batch_size, const std::string& single_value_batchnorm,
                                      int image_size, int ranks) {
  if (batch_size < 1) return absl::InvalidArgumentError(absl::StrCat("batch_size must be >= 1, got ", batch_size));
  if (images < 1) return absl::FailedPreconditionError("the training split has no images");
  ranks = std::max(1, ranks);
  // The fewest images a rank's share of a batch may hold.
  const int64_t least_share = single_value_batchnorm.empty() ? 1 : 2;
  if (ranks > 1 && images < least_share * ranks) {
    return absl::FailedPreconditionError(absl::StrCat("the training split has ", images, " images: too few for ",
                                                      ranks, " workers to have ", least_share, " each"));
  }
  if (ranks > 1 && batch_size < least_share * ranks) {
    return absl::InvalidArgumentError(absl::StrCat("batch_size ", batch_size, " is too small for ", ranks,
                                                   " workers to have ", least_share, " images each"));
  }
  const std::string why =
      absl::StrCat("the train-mode BatchNorm ", single_value_batchnorm, " would see one value per channel at ",
                   image_size, " px (its input is 1x1 there) and its running variance would become NaN");
  if (!single_value_batchnorm.empty() && batch_size == 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch_size 1: ", why, "; use --batch-size 2 or more, a larger --image-size, or freeze that stage (--freeze-depth)"));
  }
  if (!single_value_batchnorm.empty() && images == 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the training split has 1 image: ", why, "; add images, use a larger --image-size, or freeze that stage (--freeze-depth)"));
  }
  BatchPlan plan;
  plan.num_batches = (images + batch_size - 1) / batch_size;
  plan.last_batch_size = images - (plan.num_batches - 1) * batch_size;
  // The last batch's smallest share (on one rank, the batch itself) is
  // merged when it holds fewer than least_share images.
  if (plan.last_batch_size / ranks < least_share && plan.num_batches > 1) {
    --plan.num_batches;
    plan.last_batch_size += batch_size;
    plan.merged_tail = true;
  }
  return plan;
}

DivergenceMonitor::DivergenceMonitor(int64_t num_classes)
    : uniform_loss_(std::log(static_cast<double>(std::max<int64_t>(2, num_classes)))) {}

std::string DivergenceAdvice(double learning_rate) {
  return absl::StrFormat("learning rate %g; try a lower --lr, or --grad-clip", learning_rate);
}

absl::Status DivergenceMonitor::Observe(int epoch, int64_t step, double loss, double learning_rate) {
  const std::string where = absl::StrCat("training diverged at epoch ", epoch, ", step ", step, ": ");
  if (!std::isfinite(loss)) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, "loss is ", Describe(loss), " (", DivergenceAdvice(learning_rate), ")"));
  }
  if (reference_ == 0) reference_ = std::max(loss, uniform_loss_);
  window_.push_back(loss);
  window_sum_ += loss;
  if (static_cast<int>(window_.size()) > kWindow) {
    window_sum_ -= window_.front();
    window_.pop_front();
  }
  const double mean = window_sum_ / static_cast<double>(window_.size());
  if (mean > kFactor * reference_) {
    return absl::FailedPreconditionError(absl::StrCat(
        where, "the mean loss of the last ", window_.size(), " steps is ", Describe(mean), ", over ", kFactor,
        "x where training started (", Describe(reference_), ") (", DivergenceAdvice(learning_rate), ")"));
  }
  return absl::OkStatus();
}

std::optional<std::string> FirstNonFiniteTensor(const torch::jit::Module& module) {
  auto check = [](const std::string& name, const at::Tensor& t) -> std::optional<std::string> {
    if (!t.defined() || !t.is_floating_point() || t.numel() == 0) return std::nullopt;
    if (torch::isfinite(t).all().item<bool>()) return std::nullopt;
    const bool nan = torch::isnan(t).any().item<bool>();
    return absl::StrCat(name, " holds ", nan ? "NaN" : "an infinity");
  };
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    if (auto bad = check(p.name, p.value)) return bad;
  }
  for (const auto& b : module.named_buffers(/*recurse=*/true)) {
    if (auto bad = check(b.name, b.value)) return bad;
  }
  return std::nullopt;
}

absl::StatusOr<std::string> SingleValueBatchNorm(torch::jit::Module& model, int image_size) {
  try {
    torch::Device device = torch::kCPU;
    for (const auto& p : model.parameters()) {
      device = p.device();
      break;
    }
    std::vector<std::pair<std::string, at::Tensor>> saved;
    for (const auto& b : model.named_buffers(/*recurse=*/true)) saved.emplace_back(b.name, b.value.clone());
    std::string found;
    {
      // Dropout draws from the default generators; keep them where they were.
      GeneratorStateGuard cpu_rng(at::detail::getDefaultCPUGenerator());
      std::optional<GeneratorStateGuard> device_rng;
      if (!device.is_cpu()) device_rng.emplace(at::globalContext().defaultGenerator(device));
      torch::NoGradGuard no_grad;
      // A deterministic, non-constant image; no random numbers drawn.
      auto x = torch::linspace(0, 1, 3 * image_size * image_size).reshape({1, 3, image_size, image_size}).to(device);
      model.forward({x});
      for (const auto& b : model.named_buffers(/*recurse=*/true)) {
        const std::string suffix = ".running_var";
        if (b.name.size() > suffix.size() && b.name.compare(b.name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
            b.value.is_floating_point() && !torch::isfinite(b.value).all().item<bool>()) {
          found = b.name.substr(0, b.name.size() - suffix.size());
          break;
        }
      }
    }
    size_t i = 0;
    for (const auto& b : model.named_buffers(/*recurse=*/true)) b.value.copy_(saved[i++].second);
    return found;
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("probing BatchNorm at batch size 1: LibTorch: ", e.what_without_backtrace()));
  }
}

}  // namespace ft::worker
