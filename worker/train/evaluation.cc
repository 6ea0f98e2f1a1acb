#include "worker/train/evaluation.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <utility>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/util/status.h"
#include "worker/backbones/jit_modules.h"

namespace ft::worker {
namespace {

// Where `range` of a set of `n` images ends.
int64_t EndOf(EvalRange range, int64_t n) { return range.end < 0 ? n : std::min(range.end, n); }

// The indices of `range` of `set`, in order.
std::vector<int64_t> InOrder(const ImageSet& set, EvalRange range = {}) {
  const int64_t end = EndOf(range, static_cast<int64_t>(set.images.size()));
  std::vector<int64_t> order(static_cast<size_t>(std::max<int64_t>(0, end - range.begin)));
  std::iota(order.begin(), order.end(), range.begin);
  return order;
}

// The means of `r`'s sums.
EvalResult WithMeans(EvalResult r) {
  if (r.images > 0) {
    const double n = static_cast<double>(r.images);
    r.loss = r.loss_sum / n;
    r.top1 = static_cast<double>(r.top1_hits) / n;
    r.top5 = static_cast<double>(r.top5_hits) / n;
  }
  return r;
}

// PackShare's layout: the four sums, then the confusion matrix, then three
// values an image.
constexpr int64_t kPackedSums = 4;
constexpr int64_t kPackedPerImage = 3;

// The JPEG quality of thumbnails: a 96 px thumbnail is 2-5 KB.
constexpr int kThumbnailQuality = 85;

// Per-class precision, recall, F1 and support, and the confusion matrix
// (row-major, true x predicted), into the fields of one split.
void FillClassMetricsInto(const EvalResult& r, const std::vector<std::string>& classes,
                          google::protobuf::RepeatedPtrField<pb::ClassMetrics>* per_class,
                          google::protobuf::RepeatedField<int64_t>* confusion) {
  auto conf = r.confusion;
  const int64_t c = conf.size(0);
  auto acc = conf.accessor<int64_t, 2>();
  for (int64_t i = 0; i < c; ++i) {
    int64_t tp = acc[i][i], predicted = 0, actual = 0;
    for (int64_t j = 0; j < c; ++j) {
      predicted += acc[j][i];
      actual += acc[i][j];
    }
    auto* cm = per_class->Add();
    cm->set_name(classes[static_cast<size_t>(i)]);
    const double precision = predicted > 0 ? static_cast<double>(tp) / predicted : 0;
    const double recall = actual > 0 ? static_cast<double>(tp) / actual : 0;
    cm->set_precision(static_cast<float>(precision));
    cm->set_recall(static_cast<float>(recall));
    cm->set_f1(static_cast<float>(precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0));
    cm->set_support(actual);
    for (int64_t j = 0; j < c; ++j) confusion->Add(acc[i][j]);
  }
}

// Entry `i` of a decoded set, as a path relative to the dataset's folder.
std::string RelativeSamplePath(const ImageSet& set, const std::vector<datasets::Sample>& samples, size_t i,
                               const std::string& root) {
  std::string path = i < set.paths.size() ? set.paths[i] : "";
  if (path.empty() && set.size() == samples.size()) {
    // An IDX record: its file and index (IDX records are never skipped, so
    // the set's entries are the samples').
    const datasets::Sample& s = samples[i];
    const size_t slash = s.path.rfind('/');
    return absl::StrCat(slash == std::string::npos ? s.path : s.path.substr(slash + 1), "#", s.index);
  }
  if (!root.empty()) {
    const std::string prefix = root.back() == '/' ? root : root + "/";
    if (path.compare(0, prefix.size(), prefix) == 0) return path.substr(prefix.size());
  }
  return path;
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
  // The top-1 class (as counted above) and its softmax probability.
  const torch::Tensor confidence = torch::softmax(l, 1).gather(1, pred.unsqueeze(1)).squeeze(1).contiguous();
  const torch::Tensor labels64 = y.to(torch::kInt64).contiguous();
  const torch::Tensor pred64 = pred.contiguous();
  auto yy = labels64.accessor<int64_t, 1>();
  auto top = pred64.accessor<int64_t, 1>();
  auto p = confidence.accessor<float, 1>();
  for (int64_t i = 0; i < yy.size(0); ++i) predictions_.push_back({yy[i], top[i], p[i]});
}

EvalResult Evaluator::Result() const {
  EvalResult r;
  r.confusion = confusion_;
  r.predictions = predictions_;
  r.images = n_;
  r.loss_sum = loss_;
  r.top1_hits = top1_;
  r.top5_hits = top5_;
  return WithMeans(std::move(r));
}

EvalRange RankShareOfBatches(int64_t n, int64_t batch_size, bool merge_single_tail, int rank, int ranks) {
  batch_size = std::max<int64_t>(1, batch_size);
  int64_t batches = (n + batch_size - 1) / batch_size;
  if (merge_single_tail && batches > 1 && n % batch_size == 1) --batches;
  const auto [first, last] = SplitShare(batches, rank, std::max(1, ranks));
  const int64_t begin = std::min(n, first * batch_size);
  return {begin, last == batches ? n : std::min(n, last * batch_size)};
}

torch::Tensor PackShare(const EvalResult& share, EvalRange range, int64_t n, int64_t classes) {
  const int64_t head = kPackedSums + classes * classes;
  torch::Tensor packed = torch::zeros({head + kPackedPerImage * n}, torch::kFloat64);
  auto a = packed.accessor<double, 1>();
  a[0] = static_cast<double>(share.images);
  a[1] = share.loss_sum;
  a[2] = static_cast<double>(share.top1_hits);
  a[3] = static_cast<double>(share.top5_hits);
  packed.slice(0, kPackedSums, head).copy_(share.confusion.to(torch::kCPU).to(torch::kFloat64).reshape({-1}));
  for (size_t i = 0; i < share.predictions.size(); ++i) {
    const int64_t at = head + kPackedPerImage * (range.begin + static_cast<int64_t>(i));
    a[at] = static_cast<double>(share.predictions[i].label);
    a[at + 1] = static_cast<double>(share.predictions[i].predicted);
    a[at + 2] = static_cast<double>(share.predictions[i].confidence);
  }
  return packed;
}

EvalResult UnpackShares(const torch::Tensor& summed, int64_t n, int64_t classes) {
  const torch::Tensor packed = summed.to(torch::kCPU).contiguous();
  const int64_t head = kPackedSums + classes * classes;
  auto a = packed.accessor<double, 1>();
  EvalResult all;
  all.images = std::llround(a[0]);
  all.loss_sum = a[1];
  all.top1_hits = std::llround(a[2]);
  all.top5_hits = std::llround(a[3]);
  all.confusion = packed.slice(0, kPackedSums, head).round().to(torch::kInt64).reshape({classes, classes});
  all.predictions.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t at = head + kPackedPerImage * i;
    all.predictions.push_back({std::llround(a[at]), std::llround(a[at + 1]), static_cast<float>(a[at + 2])});
  }
  return WithMeans(std::move(all));
}

EvalResult Evaluate(torch::jit::Module& model, const ImageSet& set, const LoaderOptions& options,
                    torch::Device device, int64_t classes, EvalRange range) {
  model.eval();
  return Evaluate(
      set, options, device, classes, [&](const torch::Tensor& x) { return model.forward({x}).toTensor(); }, range);
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
                               int64_t classes, EvalRange range) {
  model.eval();
  torch::NoGradGuard no_grad;
  auto rest = model.attr("backbone").toModule().get_method(kForwardStages);
  auto head = model.attr("head").toModule();
  Evaluator eval(classes);
  const int64_t n = EndOf(range, activations.size(0));
  for (int64_t i = range.begin; i < n; i += batch_size) {
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
                    const std::function<torch::Tensor(const torch::Tensor&)>& logits, EvalRange range) {
  torch::NoGradGuard no_grad;
  BatchLoader loader(&set, InOrder(set, range), options);
  Evaluator eval(classes);
  while (auto batch = loader.Next()) {
    eval.Add(logits(batch->images.to(device, /*non_blocking=*/true)), batch->labels);
  }
  return eval.Result();
}

void FillClassMetrics(const EvalResult& r, const std::vector<std::string>& classes, pb::JobMetrics* m) {
  FillClassMetricsInto(r, classes, m->mutable_test_per_class(), m->mutable_test_confusion());
}

std::vector<size_t> PickMisclassified(const std::vector<Prediction>& predictions, size_t max) {
  // The wrong ones per true class, most confident first.
  std::map<int64_t, std::vector<size_t>> wrong;
  for (size_t i = 0; i < predictions.size(); ++i) {
    if (predictions[i].predicted != predictions[i].label) wrong[predictions[i].label].push_back(i);
  }
  for (auto& [label, indices] : wrong) {
    std::stable_sort(indices.begin(), indices.end(), [&](size_t a, size_t b) {
      return predictions[a].confidence > predictions[b].confidence;
    });
  }
  std::vector<size_t> picks;
  for (size_t round = 0; picks.size() < max; ++round) {
    bool any = false;
    for (const auto& [label, indices] : wrong) {
      if (round >= indices.size()) continue;
      any = true;
      picks.push_back(indices[round]);
      if (picks.size() == max) break;
    }
    if (!any) break;
  }
  return picks;
}

absl::StatusOr<std::string> ThumbnailJpeg(const cv::Mat& image, int longer_side) {
  if (image.empty() || longer_side <= 0) return absl::InvalidArgumentError("no image to make a thumbnail of");
  try {
    const double scale = static_cast<double>(longer_side) / std::max(image.cols, image.rows);
    const cv::Size size(std::max(1, static_cast<int>(std::lround(image.cols * scale))),
                        std::max(1, static_cast<int>(std::lround(image.rows * scale))));
    cv::Mat resized;
    // Area averaging to shrink; nearest neighbour to enlarge small images
    // (28 px digits, 36 px crops), whose pixels then stay sharp.
    cv::resize(image, resized, size, 0, 0, scale < 1 ? cv::INTER_AREA : cv::INTER_NEAREST);
    if (resized.channels() == 3) cv::cvtColor(resized, resized, cv::COLOR_RGB2BGR);  // imencode wants BGR
    std::vector<uchar> bytes;
    if (!cv::imencode(".jpg", resized, bytes, {cv::IMWRITE_JPEG_QUALITY, kThumbnailQuality})) {
      return absl::InternalError("OpenCV could not encode a thumbnail as JPEG");
    }
    return std::string(bytes.begin(), bytes.end());
  } catch (const cv::Exception& e) {
    return absl::InternalError(absl::StrCat("OpenCV could not make a thumbnail: ", e.what()));
  }
}

absl::Status FillMisclassified(const ImageSet& set, const std::vector<datasets::Sample>& samples,
                               const std::vector<Prediction>& predictions, const std::string& dataset_root,
                               google::protobuf::RepeatedPtrField<pb::Misclassified>* out) {
  size_t bytes = 0;
  for (size_t i : PickMisclassified(predictions, kMaxMisclassified)) {
    cv::Mat image;
    try {
      image = set.Get(i);
    } catch (const std::exception& e) {
      return absl::FailedPreconditionError(e.what());
    }
    FT_ASSIGN_OR_RETURN(std::string jpeg, ThumbnailJpeg(image, kThumbnailSide));
    if (bytes + jpeg.size() > kMaxThumbnailBytes) break;
    bytes += jpeg.size();
    pb::Misclassified* m = out->Add();
    m->set_path(RelativeSamplePath(set, samples, i, dataset_root));
    m->set_true_class(static_cast<int32_t>(predictions[i].label));
    m->set_predicted_class(static_cast<int32_t>(predictions[i].predicted));
    m->set_confidence(predictions[i].confidence);
    m->set_thumbnail_jpeg(std::move(jpeg));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> TestModel(torch::jit::Module& model, const std::vector<datasets::Sample>& samples,
                                  const std::vector<std::string>& classes, const SplitEvalOptions& options,
                                  const Reporter& report, pb::JobMetrics* metrics) {
  pb::Progress p;
  p.set_phase("test");
  report.Progress(p);
  FT_ASSIGN_OR_RETURN(ImageSet test_set, DecodeSamples(samples, options.decode));
  const EvalResult test =
      Evaluate(model, test_set, options.loader, options.device, static_cast<int64_t>(classes.size()));
  metrics->set_has_test(true);
  metrics->set_test_accuracy(static_cast<float>(test.top1));
  metrics->set_test_top5_accuracy(static_cast<float>(test.top5));
  metrics->set_test_loss(static_cast<float>(test.loss));
  if (!std::isfinite(test.loss)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the trained model's test loss is ", std::isnan(test.loss) ? "NaN" : "infinite", "; it is not stored"));
  }
  FillClassMetrics(test, classes, metrics);
  FT_RETURN_IF_ERROR(FillMisclassified(test_set, samples, test.predictions, options.dataset_root,
                                       metrics->mutable_test_misclassified()));
  report.Info(absl::StrFormat("test: top-1 %.4f, top-5 %.4f on %d images", test.top1, test.top5,
                              test_set.images.size()));
  return static_cast<int64_t>(test_set.images.size());
}

absl::Status DescribeValidation(torch::jit::Module& model, const ImageSet& val, const EvalResult& exported,
                                const std::vector<datasets::Sample>& samples,
                                const std::vector<std::string>& classes, const SplitEvalOptions& options,
                                const Reporter& report, pb::JobMetrics* metrics) {
  const bool known = exported.predictions.size() == val.size() && exported.confusion.defined();
  const EvalResult r =
      known ? exported : Evaluate(model, val, options.loader, options.device, static_cast<int64_t>(classes.size()));
  FillClassMetricsInto(r, classes, metrics->mutable_val_per_class(), metrics->mutable_val_confusion());
  FT_RETURN_IF_ERROR(
      FillMisclassified(val, samples, r.predictions, options.dataset_root, metrics->mutable_val_misclassified()));
  report.Info(absl::StrFormat("no test split: per-class metrics of the exported epoch on the %d validation images "
                              "(top-1 %.4f%s), %d of them misclassified",
                              val.size(), r.top1, known ? "" : ", evaluated again after a resume",
                              std::count_if(r.predictions.begin(), r.predictions.end(),
                                            [](const Prediction& p) { return p.predicted != p.label; })));
  return absl::OkStatus();
}

}  // namespace ft::worker
