#include "worker/train/job_data.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/util/status.h"

namespace ft::worker {
namespace {

using Clock = std::chrono::steady_clock;

// The files named in a warning about skipped images, at most.
constexpr size_t kNamedSkipped = 5;

}  // namespace

absl::StatusOr<datasets::DatasetLayout> ScanJobDataset(const pb::ResolvedJob& job) {
  datasets::LayoutOptions options;
  options.classes.assign(job.dataset_classes().begin(), job.dataset_classes().end());
  options.max_per_class = job.max_per_class();
  options.max_val_per_class = job.max_val_per_class();
  options.val_from_split = job.val_from_split();
  options.val_split = job.spec().val_split();
  options.seed = static_cast<uint64_t>(job.spec().seed());
  // Checked again here, before any file is read: the server checked at
  // submit, perhaps long ago, and on its own view of the files (a worker
  // may read a cached copy or another mount).
  options.roots.assign(job.dataset_roots().begin(), job.dataset_roots().end());
  return datasets::ScanDataset(job.dataset_path(), options);
}

absl::StatusOr<JobData> LoadJobData(const pb::ResolvedJob& job, const Recipe& recipe, int64_t decode_cache_bytes,
                                    const Reporter& report) {
  JobData data;
  FT_ASSIGN_OR_RETURN(data.layout, ScanJobDataset(job));
  DecodeOptions& decode = data.decode;
  decode.max_short_side = EvalResizeSize(recipe.spec().image_size());
  decode.threads = std::max(1, torch::get_num_threads());
  decode.skip_bad = recipe.skips_bad_images();
  decode.cache_budget_bytes = decode_cache_bytes;
  const auto load_start = Clock::now();
  // One budget for all the job's images: what a set keeps is spent.
  auto spend = [&decode](const ImageSet& set) {
    if (decode.cache_budget_bytes >= 0) {
      decode.cache_budget_bytes = std::max<int64_t>(0, decode.cache_budget_bytes - set.cached_bytes);
    }
  };
  FT_ASSIGN_OR_RETURN(data.train, DecodeSamples(data.layout.train, decode));
  spend(data.train);
  FT_ASSIGN_OR_RETURN(data.val, DecodeSamples(data.layout.val, decode));
  spend(data.val);
  for (const ImageSet* set : {&data.train, &data.val}) {
    if (set->skipped.empty()) continue;
    std::vector<std::string> few(set->skipped.begin(),
                                 set->skipped.begin() + std::min(kNamedSkipped, set->skipped.size()));
    report.Log("warning", absl::StrCat("skipped ", set->skipped.size(), " undecodable ",
                                       set == &data.train ? "training" : "validation", " images: ",
                                       absl::StrJoin(few, ", "), set->skipped.size() > few.size() ? ", ..." : ""));
    data.skipped_images += static_cast<int64_t>(set->skipped.size());
  }
  if (data.train.images.empty() || data.val.images.empty()) {
    return absl::FailedPreconditionError("no decodable training or validation images are left");
  }
  const double load_seconds = std::chrono::duration<double>(Clock::now() - load_start).count();
  report.Info(absl::StrFormat("%d classes, %d train and %d val images (val: %s), decoded in %.1fs",
                              data.num_classes(), data.train.images.size(), data.val.images.size(),
                              data.layout.val_source, load_seconds));
  const int64_t uncached = data.train.uncached + data.val.uncached;
  if (uncached > 0) {
    report.Info(absl::StrFormat(
        "decode cache full (%.0f MiB kept): %d of %d images are decoded again every epoch (worker --decode-cache-mb)",
        (data.train.cached_bytes + data.val.cached_bytes) / 1048576.0, uncached, data.train.size() + data.val.size()));
  }
  return data;
}

}  // namespace ft::worker
