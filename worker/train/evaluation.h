// Evaluation, as torchvision's train.py `evaluate`: loss, top-1 and top-5
// over a whole set, the confusion matrix and per-class metrics, and the
// backbone features of a set computed once for a frozen backbone.
#ifndef FT_WORKER_TRAIN_EVALUATION_H_
#define FT_WORKER_TRAIN_EVALUATION_H_

#include <cstdint>
#include <string>
#include <vector>

#include <functional>

#include <torch/script.h>
#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "common/datasets/layout.h"
#include "finetune/v1/finetune.pb.h"
#include "worker/data/images.h"
#include "worker/data/loader.h"
#include "worker/train/hooks.h"

namespace ft::worker {

struct EvalResult {
  double loss = 0;  // mean cross-entropy, unsmoothed and unweighted
  double top1 = 0;
  double top5 = 0;
  torch::Tensor confusion;  // int64 [C, C]: true x predicted
};

// Accumulates loss, top-1, top-5 and the confusion matrix over batches.
class Evaluator {
 public:
  explicit Evaluator(int64_t classes);
  // `logits` [N, C] and `labels` [N], on any device.
  void Add(const torch::Tensor& logits, const torch::Tensor& labels);
  EvalResult Result() const;

 private:
  torch::Tensor confusion_;
  double loss_ = 0;
  int64_t top1_ = 0, top5_ = 0, n_ = 0;
};

// The model (a classifier) in eval mode, without gradients, over `set` in
// order, batched by `options`.
EvalResult Evaluate(torch::jit::Module& model, const ImageSet& set, const LoaderOptions& options,
                    torch::Device device, int64_t classes);

// The head (in eval mode, without gradients) over features computed once.
EvalResult EvaluateFeatures(torch::jit::Module& head, const torch::Tensor& features, const torch::Tensor& labels,
                            int64_t classes);

// The classifier `model` (eval mode, without gradients) over activations
// computed once: the output of its backbone's first `prefix_stages` stages
// (ComputeFeatures), run through the rest of the backbone and the head in
// batches of `batch_size`.
EvalResult EvaluateActivations(torch::jit::Module& model, const torch::Tensor& activations,
                               const torch::Tensor& labels, int prefix_stages, int num_stages, int64_t batch_size,
                               int64_t classes);

// What `prefix` (BuildFrozenPrefix: frozen stages as an inference graph)
// makes of a whole set, without gradients, on `device`, in batches of at
// least 128 images and never of one (oneDNN runs one image with other
// kernels than a batch, ~1e-6 apart, and the training batches the values
// stand in for hold two or more).
// Written into `into` (one row an image of `set`, of any floating dtype,
// e.g. on a mapped file), which it returns.
torch::Tensor ComputeFeatures(torch::jit::Module& prefix, const ImageSet& set, const LoaderOptions& options,
                              torch::Device device, torch::Tensor into);

// `logits` (called without gradients) over `set` in order, batched by
// `options`.
EvalResult Evaluate(const ImageSet& set, const LoaderOptions& options, torch::Device device, int64_t classes,
                    const std::function<torch::Tensor(const torch::Tensor&)>& logits);

// Per-class precision, recall, F1 and support, and the confusion matrix
// (row-major, true x predicted), as the metrics' test_* fields.
void FillClassMetrics(const EvalResult& r, const std::vector<std::string>& classes, pb::JobMetrics* m);

// The test split: decodes `samples` with `decode`, evaluates the model on
// them (reported as the "test" phase) and fills the metrics' test figures
// and per-class metrics. Returns the number of test images.
// FAILED_PRECONDITION when the test loss is not finite (the model is then
// not to be stored), and DecodeSamples' errors.
absl::StatusOr<int64_t> TestModel(torch::jit::Module& model, const std::vector<datasets::Sample>& samples,
                                  const std::vector<std::string>& classes, const DecodeOptions& decode,
                                  const LoaderOptions& eval_loader, torch::Device device, const Reporter& report,
                                  pb::JobMetrics* metrics);

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_EVALUATION_H_
