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

// One image's label, the model's top-1 class and its softmax probability.
struct Prediction {
  int64_t label = 0;
  int64_t predicted = 0;
  float confidence = 0;
};

struct EvalResult {
  double loss = 0;  // mean cross-entropy, unsmoothed and unweighted
  double top1 = 0;
  double top5 = 0;
  torch::Tensor confusion;  // int64 [C, C]: true x predicted
  // Each image's, in the order evaluated (that of the set).
  std::vector<Prediction> predictions;
  // What the means are of: images, their summed loss, top-1 and top-5 hits
  // (a multi-worker job sums them over its ranks' shares).
  int64_t images = 0;
  double loss_sum = 0;
  int64_t top1_hits = 0;
  int64_t top5_hits = 0;
};

// Images [begin, end) of a set, in its order; end -1: to the set's end.
struct EvalRange {
  int64_t begin = 0;
  int64_t end = -1;
};

// A multi-worker job's validation: rank `rank` of `ranks` evaluates whole
// batches of the one-worker pass over `n` images (batches of `batch_size`;
// with `merge_single_tail` a last batch of one joins the one before, as the
// loader does), a contiguous run of them (SplitShare over the batches), so
// that every image is evaluated in the very batch it would be on one worker
// and the summed result is one worker's. A rank with no batch gets an empty
// range.
EvalRange RankShareOfBatches(int64_t n, int64_t batch_size, bool merge_single_tail, int rank, int ranks);

// The ranks' shares travel as one float64 vector each, which the ranks sum
// (an all-reduce): `share`'s counts and sums, its confusion matrix, and each
// of its images' label, prediction and confidence at that image's place among
// all `n` images of the set (zero elsewhere). Every value is a float or an
// integer well inside float64, so the sum is exact but for the loss sum.
torch::Tensor PackShare(const EvalResult& share, EvalRange range, int64_t n, int64_t classes);
// The whole set's result from the sum of every share's PackShare.
EvalResult UnpackShares(const torch::Tensor& summed, int64_t n, int64_t classes);

// Accumulates loss, top-1, top-5, the confusion matrix and each image's
// prediction over batches.
class Evaluator {
 public:
  explicit Evaluator(int64_t classes);
  // `logits` [N, C] and `labels` [N], on any device.
  void Add(const torch::Tensor& logits, const torch::Tensor& labels);
  EvalResult Result() const;

 private:
  torch::Tensor confusion_;
  std::vector<Prediction> predictions_;
  double loss_ = 0;
  int64_t top1_ = 0, top5_ = 0, n_ = 0;
};

// The model (a classifier) in eval mode, without gradients, over `set` in
// order, batched by `options`.
EvalResult Evaluate(torch::jit::Module& model, const ImageSet& set, const LoaderOptions& options,
                    torch::Device device, int64_t classes, EvalRange range = {});

// The head (in eval mode, without gradients) over features computed once.
EvalResult EvaluateFeatures(torch::jit::Module& head, const torch::Tensor& features, const torch::Tensor& labels,
                            int64_t classes);

// The classifier `model` (eval mode, without gradients) over activations
// computed once: the output of its backbone's first `prefix_stages` stages
// (ComputeFeatures), run through the rest of the backbone and the head in
// batches of `batch_size`.
EvalResult EvaluateActivations(torch::jit::Module& model, const torch::Tensor& activations,
                               const torch::Tensor& labels, int prefix_stages, int num_stages, int64_t batch_size,
                               int64_t classes, EvalRange range = {});

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
// `options`; images `range` of it only.
EvalResult Evaluate(const ImageSet& set, const LoaderOptions& options, torch::Device device, int64_t classes,
                    const std::function<torch::Tensor(const torch::Tensor&)>& logits, EvalRange range = {});

// Per-class precision, recall, F1 and support, and the confusion matrix
// (row-major, true x predicted), as the metrics' test_* fields.
void FillClassMetrics(const EvalResult& r, const std::vector<std::string>& classes, pb::JobMetrics* m);

// The misclassified images recorded per split (JobMetrics.*_misclassified),
// at most, and their thumbnails' size and budget: a job's record stays small.
inline constexpr size_t kMaxMisclassified = 24;
inline constexpr int kThumbnailSide = 96;                 // the longer side, px
inline constexpr size_t kMaxThumbnailBytes = 160 * 1024;  // all thumbnails of a split together

// Up to `max` indices of the wrong `predictions`, spread over the true
// classes: one per class in turn (classes in label order), and within a
// class the most confident mistakes first (ties: the lower index). The same
// predictions always give the same picks.
std::vector<size_t> PickMisclassified(const std::vector<Prediction>& predictions, size_t max);

// `image` (8-bit gray or RGB, as ImageSet holds) resized so that its longer
// side is `longer_side` px, encoded as JPEG. INTERNAL when OpenCV fails.
absl::StatusOr<std::string> ThumbnailJpeg(const cv::Mat& image, int longer_side);

// Records the picked mistakes of `set` (evaluated into `predictions`) with
// their thumbnails, in pick order, until kMaxThumbnailBytes is spent. Paths
// are relative to `dataset_root` (the entries of `samples` name IDX records).
absl::Status FillMisclassified(const ImageSet& set, const std::vector<datasets::Sample>& samples,
                               const std::vector<Prediction>& predictions, const std::string& dataset_root,
                               google::protobuf::RepeatedPtrField<pb::Misclassified>* out);

// Where the test split and the validation details are read from and how.
struct SplitEvalOptions {
  DecodeOptions decode;     // decodes the test split
  LoaderOptions loader;     // the eval loader
  torch::Device device = torch::kCPU;
  std::string dataset_root;  // misclassified paths are relative to it
};

// The test split: decodes `samples`, evaluates the model on them (reported
// as the "test" phase) and fills the metrics' test figures, per-class
// metrics, confusion matrix and misclassified images. Returns the number of
// test images. FAILED_PRECONDITION when the test loss is not finite (the
// model is then not to be stored), and DecodeSamples' errors.
absl::StatusOr<int64_t> TestModel(torch::jit::Module& model, const std::vector<datasets::Sample>& samples,
                                  const std::vector<std::string>& classes, const SplitEvalOptions& options,
                                  const Reporter& report, pb::JobMetrics* metrics);

// For a dataset without a test split: the exported epoch's own validation
// `exported` (EpochsResult::exported_val) of the already decoded validation
// split `val` (of `samples`), filling the metrics' val_per_class,
// val_confusion and val_misclassified. When `exported` holds no prediction
// for each image of `val` (a job resumed past that epoch from a checkpoint
// of before this was kept), the model (the exported weights) is evaluated
// on `val` instead.
absl::Status DescribeValidation(torch::jit::Module& model, const ImageSet& val, const EvalResult& exported,
                                const std::vector<datasets::Sample>& samples,
                                const std::vector<std::string>& classes, const SplitEvalOptions& options,
                                const Reporter& report, pb::JobMetrics* metrics);

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_EVALUATION_H_
