#include "worker/agent/tools.h"

#include <algorithm>
#include <chrono>
#include <map>

#include <torch/script.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "common/datasets/layout.h"
#include "common/spec/spec_options.h"
#include "common/util/files.h"
#include "common/util/status.h"
#include "worker/backbones/backbone.h"
#include "worker/data/images.h"
#include "worker/train/job_data.h"

namespace ft::worker {
namespace {

constexpr int kTimedSteps = 3;
constexpr size_t kNamedFailures = 5;

double MedianStepSeconds(torch::jit::Module& model, int batch, int size, bool frozen_backbone) {
  std::vector<torch::Tensor> params;
  for (const auto& p : model.parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  torch::optim::Adam opt(params, torch::optim::AdamOptions(1e-4));
  auto x = torch::randn({batch, 3, size, size});
  auto y = torch::zeros({batch}, torch::kLong);
  std::vector<double> times;
  for (int i = 0; i <= kTimedSteps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto logits = model.forward({x}).toTensor();
    auto loss = torch::nn::functional::cross_entropy(logits, y);
    opt.zero_grad();
    if (!params.empty()) loss.backward();
    opt.step();
    if (i > 0) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  (void)frozen_backbone;
  return times[times.size() / 2];
}

}  // namespace

absl::StatusOr<pb::ValidationReport> ValidateJobTool(const pb::ResolvedJob& job) {
  try {
    const pb::JobSpec& spec = job.spec();
    FT_ASSIGN_OR_RETURN(const spec::SpecOptions options, spec::ParseSpecOptions(spec));
    pb::ValidationReport report;
    *report.mutable_spec() = spec;
    FT_ASSIGN_OR_RETURN(datasets::DatasetLayout layout, ScanJobDataset(job));
    report.set_dataset_format(layout.format);
    report.set_val_source(layout.val_source);
    std::vector<pb::ClassCount> counts(layout.classes.size());
    for (size_t i = 0; i < layout.classes.size(); ++i) counts[i].set_name(layout.classes[i]);
    for (const auto& s : layout.train) counts[static_cast<size_t>(s.label)].set_train(counts[static_cast<size_t>(s.label)].train() + 1);
    for (const auto& s : layout.val) counts[static_cast<size_t>(s.label)].set_val(counts[static_cast<size_t>(s.label)].val() + 1);
    for (const auto& s : layout.test) counts[static_cast<size_t>(s.label)].set_test(counts[static_cast<size_t>(s.label)].test() + 1);
    int64_t min_train = INT64_MAX, max_train = 0;
    for (auto& c : counts) {
      min_train = std::min(min_train, c.train());
      max_train = std::max(max_train, c.train());
      *report.add_classes() = std::move(c);
    }
    report.set_imbalance_ratio(min_train > 0 ? static_cast<float>(max_train) / min_train : 0);
    if (report.imbalance_ratio() >= 3) {
      report.add_warnings(absl::StrFormat(
          "classes are imbalanced (%.1fx between the largest and smallest); consider --class-weights balanced",
          report.imbalance_ratio()));
    }
    if (min_train < 5) report.add_warnings(absl::StrCat("a class has only ", min_train, " training images"));

    // Decode everything, as training would, skipping failures to count them.
    std::vector<datasets::Sample> all = layout.train;
    all.insert(all.end(), layout.val.begin(), layout.val.end());
    all.insert(all.end(), layout.test.begin(), layout.test.end());
    // Sizes are taken as each image is decoded; none is kept in memory.
    struct Size {
      int width = 0, height = 0, channels = 0;
    };
    std::vector<Size> decoded_sizes(all.size());
    DecodeOptions decode;
    decode.skip_bad = true;
    decode.threads = std::max(1, torch::get_num_threads());
    decode.cache_budget_bytes = 0;
    decode.inspect = [&decoded_sizes](size_t i, const cv::Mat& img) {
      decoded_sizes[i] = Size{img.cols, img.rows, img.channels()};
    };
    FT_ASSIGN_OR_RETURN(ImageSet set, DecodeSamples(all, decode));
    report.set_undecodable(static_cast<int64_t>(set.skipped.size()));
    for (size_t i = 0; i < std::min(set.skipped.size(), kNamedFailures); ++i) {
      report.add_undecodable_examples(set.skipped[i]);
    }
    if (!set.skipped.empty()) {
      const bool skip = options.on_bad_image == spec::OnBadImage::kSkip;
      report.add_warnings(absl::StrCat(set.skipped.size(), " images cannot be decoded; the job will ",
                                       skip ? "skip them" : "fail (use --on-bad-image skip)"));
    }
    auto* sizes = report.mutable_image_sizes();
    double sum_w = 0, sum_h = 0;
    for (const Size& img : decoded_sizes) {
      if (img.channels == 0) continue;  // undecodable
      if (sizes->images() == 0) {
        sizes->set_min_width(img.width);
        sizes->set_max_width(img.width);
        sizes->set_min_height(img.height);
        sizes->set_max_height(img.height);
      }
      sizes->set_images(sizes->images() + 1);
      sizes->set_min_width(std::min(sizes->min_width(), img.width));
      sizes->set_max_width(std::max(sizes->max_width(), img.width));
      sizes->set_min_height(std::min(sizes->min_height(), img.height));
      sizes->set_max_height(std::max(sizes->max_height(), img.height));
      sum_w += img.width;
      sum_h += img.height;
      if (img.channels == 1) sizes->set_grayscale(sizes->grayscale() + 1);
    }
    if (sizes->images() > 0) {
      sizes->set_mean_width(static_cast<float>(sum_w / sizes->images()));
      sizes->set_mean_height(static_cast<float>(sum_h / sizes->images()));
      if (sizes->min_width() < spec.image_size() / 2 || sizes->min_height() < spec.image_size() / 2) {
        report.add_warnings(absl::StrFormat("some images (%dx%d) are much smaller than --image-size %d",
                                            sizes->min_width(), sizes->min_height(), spec.image_size()));
      }
    }

    // The model at the chosen freeze depth, and a few timed steps.
    torch::manual_seed(0);
    Backbone backbone;
    if (spec.backbone() == kTorchScriptBackbone) {
      FT_ASSIGN_OR_RETURN(backbone, LoadTorchScriptBackbone(job.weights_path(), spec.image_size()));
    } else {
      FT_ASSIGN_OR_RETURN(backbone, BuildBackbone(spec.backbone()));
    }
    auto model = BuildClassifier(backbone.module, backbone.feature_dim, layout.classes);
    ApplyFreeze(model, backbone, spec.freeze_depth());
    int64_t trainable = 0, frozen = 0;
    for (const auto& p : model.parameters()) (p.requires_grad() ? trainable : frozen) += p.numel();
    report.set_trainable_parameters(trainable);
    report.set_frozen_parameters(frozen);
    const int batch = std::min<int>(spec.batch_size(), std::max<int>(1, static_cast<int>(layout.train.size())));
    const double step = MedianStepSeconds(model, batch, spec.image_size(), spec.freeze_depth() < 0);
    const double steps = std::ceil(static_cast<double>(layout.train.size()) / spec.batch_size());
    // Validation is a forward pass only: about a third of a training step per image.
    const double val = step / 3.0 * std::ceil(static_cast<double>(layout.val.size()) / spec.batch_size());
    report.set_estimated_epoch_seconds(static_cast<float>(steps * step + val));
    report.set_estimate_device("cpu");
    return report;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("validation failed: ", e.what()));
  }
}

absl::StatusOr<pb::PredictResponse> PredictTool(const std::string& model_dir,
                                                const std::vector<std::string>& images, int top_k) {
  try {
    FT_ASSIGN_OR_RETURN(std::string meta_text, util::ReadFile(model_dir + "/metadata.json", 64 << 20));
    nlohmann::json meta = nlohmann::json::parse(meta_text, nullptr, false);
    if (meta.is_discarded() || !meta.contains("classes") || !meta.contains("image_size")) {
      return absl::DataLossError("model metadata.json is unreadable");
    }
    TransformOptions t;
    t.image_size = meta["image_size"].get<int>();
    for (int c = 0; c < 3; ++c) {
      t.mean[c] = meta["mean"][c].get<float>();
      t.std[c] = meta["std"][c].get<float>();
    }
    std::vector<std::string> classes = meta["classes"].get<std::vector<std::string>>();
    torch::jit::Module model = torch::jit::load(model_dir + "/model.pt", torch::kCPU);
    model.eval();
    torch::NoGradGuard no_grad;
    const int s = t.image_size;
    auto x = torch::empty({static_cast<int64_t>(images.size()), 3, s, s});
    std::mt19937_64 rng(0);
    for (size_t i = 0; i < images.size(); ++i) {
      auto img = DecodeImageFile(images[i]);
      if (!img.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("image ", i + 1, " cannot be decoded"));
      }
      TransformInto(*img, t, &rng, x.data_ptr<float>() + i * 3 * s * s);
    }
    auto probs = torch::softmax(model.forward({x}).toTensor(), 1);
    const int64_t k = std::min<int64_t>(std::max(1, top_k), static_cast<int64_t>(classes.size()));
    auto [values, indices] = probs.topk(k, 1);
    pb::PredictResponse response;
    for (int64_t i = 0; i < values.size(0); ++i) {
      auto* p = response.add_predictions();
      for (int64_t j = 0; j < k; ++j) {
        auto* c = p->add_top();
        const int64_t idx = indices[i][j].item<int64_t>();
        c->set_index(static_cast<int32_t>(idx));
        c->set_label(classes[static_cast<size_t>(idx)]);
        c->set_probability(values[i][j].item<float>());
      }
    }
    return response;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("prediction failed: ", std::string(e.what()).substr(0, 300)));
  }
}

}  // namespace ft::worker
