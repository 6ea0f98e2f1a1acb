#include "worker/train/evaluation.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/util/status.h"
#include "worker/backbones/jit_modules.h"

namespace ft::worker {
namespace {

// Every index of `set`, in order.
std::vector<int64_t> InOrder(const ImageSet& set) {
  std::vector<int64_t> order(set.images.size());
  std::iota(order.begin(), order.end(), 0);
  return order;
}

}  // namespace

Evaluator::Evaluator(int64_t classes) : confusion_(torch::zeros({classes, classes}, torch::kInt64)) {}

void Evaluator::Add(const torch::Tensor& logits, const torch::Tensor& labels) {
  auto l = logits.to(torch::kCPU).to(torch::kFloat32);
  auto y = labels.to(torch::kCPU);
  loss_ += torch::nn::functional::cross_entropy(
               l, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
               .item<double>();
  const int64_t k = std::min<int64_t>(5, l.size(1));
  auto topk = std::get<1>(l.topk(k, 1));
  auto pred = topk.select(1, 0);
  top1_ += pred.eq(y).sum().item<int64_t>();
  top5_ += topk.eq(y.unsqueeze(1)).any(1).sum().item<int64_t>();
  n_ += y.size(0);
  confusion_.index_put_({y, pred}, torch::ones_like(y), /*accumulate=*/true);
}

EvalResult Evaluator::Result() const {
  EvalResult r;
  if (n_ > 0) {
    r.loss = loss_ / n_;
    r.top1 = static_cast<double>(top1_) / n_;
    r.top5 = static_cast<double>(top5_) / n_;
  }
  r.confusion = confusion_;
  return r;
}

EvalResult Evaluate(torch::jit::Module& model, const ImageSet& set, const LoaderOptions& options,
                    torch::Device device, int64_t classes) {
  model.eval();
  return Evaluate(set, options, device, classes, [&](const torch::Tensor& x) { return model.forward({x}).toTensor(); });
}

EvalResult EvaluateFeatures(torch::jit::Module& head, const torch::Tensor& features, const torch::Tensor& labels,
                            int64_t classes) {
  head.eval();
  torch::NoGradGuard no_grad;
  Evaluator eval(classes);
  eval.Add(head.forward({features.to(torch::kFloat)}).toTensor(), labels);
  return eval.Result();
}

EvalResult EvaluateActivations(torch::jit::Module& model, const torch::Tensor& activations,
                               const torch::Tensor& labels, int prefix_stages, int num_stages, int64_t batch_size,
                               int64_t classes) {
  model.eval();
  torch::NoGradGuard no_grad;
  auto rest = model.attr("backbone").toModule().get_method(kForwardStages);
  auto head = model.attr("head").toModule();
  Evaluator eval(classes);
  const int64_t n = activations.size(0);
  for (int64_t i = 0; i < n; i += batch_size) {
    const int64_t end = std::min(n, i + batch_size);
    auto features = rest({activations.slice(0, i, end).to(torch::kFloat), prefix_stages, num_stages}).toTensor();
    eval.Add(head.forward({features}).toTensor(), labels.slice(0, i, end));
  }
  return eval.Result();
}

torch::Tensor ComputeFeatures(torch::jit::Module& prefix, const ImageSet& set, const LoaderOptions& options,
                              torch::Device device, torch::Tensor into) {
  torch::NoGradGuard no_grad;
  LoaderOptions batched = options;
  batched.batch_size = std::max(options.batch_size, 128);
  batched.merge_single_tail = true;
  BatchLoader loader(&set, InOrder(set), batched);
  int64_t row = 0;
  while (auto batch = loader.Next()) {
    auto out = prefix.forward({batch->images.to(device, /*non_blocking=*/true)}).toTensor();
    into.slice(0, row, row + out.size(0)).copy_(out);
    row += out.size(0);
  }
  return into;
}

EvalResult Evaluate(const ImageSet& set, const LoaderOptions& options, torch::Device device, int64_t classes,
                    const std::function<torch::Tensor(const torch::Tensor&)>& logits) {
  torch::NoGradGuard no_grad;
  BatchLoader loader(&set, InOrder(set), options);
  Evaluator eval(classes);
  while (auto batch = loader.Next()) {
    eval.Add(logits(batch->images.to(device, /*non_blocking=*/true)), batch->labels);
  }
  return eval.Result();
}

void FillClassMetrics(const EvalResult& r, const std::vector<std::string>& classes, pb::JobMetrics* m) {
  auto conf = r.confusion;
  const int64_t c = conf.size(0);
  auto acc = conf.accessor<int64_t, 2>();
  for (int64_t i = 0; i < c; ++i) {
    int64_t tp = acc[i][i], predicted = 0, actual = 0;
    for (int64_t j = 0; j < c; ++j) {
      predicted += acc[j][i];
      actual += acc[i][j];
    }
    auto* cm = m->add_test_per_class();
    cm->set_name(classes[static_cast<size_t>(i)]);
    const double precision = predicted > 0 ? static_cast<double>(tp) / predicted : 0;
    const double recall = actual > 0 ? static_cast<double>(tp) / actual : 0;
    cm->set_precision(static_cast<float>(precision));
    cm->set_recall(static_cast<float>(recall));
    cm->set_f1(static_cast<float>(precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0));
    cm->set_support(actual);
    for (int64_t j = 0; j < c; ++j) m->add_test_confusion(acc[i][j]);
  }
}

absl::StatusOr<int64_t> TestModel(torch::jit::Module& model, const std::vector<datasets::Sample>& samples,
                                  const std::vector<std::string>& classes, const DecodeOptions& decode,
                                  const LoaderOptions& eval_loader, torch::Device device, const Reporter& report,
                                  pb::JobMetrics* metrics) {
  pb::Progress p;
  p.set_phase("test");
  report.Progress(p);
  FT_ASSIGN_OR_RETURN(ImageSet test_set, DecodeSamples(samples, decode));
  const EvalResult test =
      Evaluate(model, test_set, eval_loader, device, static_cast<int64_t>(classes.size()));
  metrics->set_has_test(true);
  metrics->set_test_accuracy(static_cast<float>(test.top1));
  metrics->set_test_top5_accuracy(static_cast<float>(test.top5));
  metrics->set_test_loss(static_cast<float>(test.loss));
  if (!std::isfinite(test.loss)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the trained model's test loss is ", std::isnan(test.loss) ? "NaN" : "infinite", "; it is not stored"));
  }
  FillClassMetrics(test, classes, metrics);
  report.Info(absl::StrFormat("test: top-1 %.4f, top-5 %.4f on %d images", test.top1, test.top5,
                              test_set.images.size()));
  return static_cast<int64_t>(test_set.images.size());
}

}  // namespace ft::worker
