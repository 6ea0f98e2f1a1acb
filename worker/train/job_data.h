// A job's data: its dataset's files, split as the server split them at
// submit, and its training and validation images decoded.
#ifndef FT_WORKER_TRAIN_JOB_DATA_H_
#define FT_WORKER_TRAIN_JOB_DATA_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "common/datasets/layout.h"
#include "finetune/v1/worker.pb.h"
#include "worker/data/images.h"
#include "worker/train/hooks.h"
#include "worker/train/recipe.h"

namespace ft::worker {

// The files of the job's dataset, split exactly as the server did at submit
// (its class subset, per-class caps, val split and seed), and held to the
// same sandbox (ResolvedJob.dataset_roots): PERMISSION_DENIED naming the
// first file that resolves outside it.
absl::StatusOr<datasets::DatasetLayout> ScanJobDataset(const pb::ResolvedJob& job);

// Not copyable in spirit: loaders point into `train` and `val`, so keep it
// in one place while they run.
struct JobData {
  datasets::DatasetLayout layout;
  // How the sets were decoded, with what is left of the cache budget: the
  // test split is decoded with it at the end.
  DecodeOptions decode;
  ImageSet train;
  ImageSet val;
  // Undecodable images skipped (on_bad_image skip), train and val.
  int64_t skipped_images = 0;

  int64_t num_classes() const { return static_cast<int64_t>(layout.classes.size()); }
};

// Scans the job's dataset and decodes its train and val splits, shrunk to
// the eval resize size, with one decode cache budget of
// `decode_cache_bytes` for all of the job's images (negative: no limit).
// Reports skipped images as warnings and the sizes as info.
// FAILED_PRECONDITION when no decodable training or validation image is
// left, and the scanner's and decoder's errors.
absl::StatusOr<JobData> LoadJobData(const pb::ResolvedJob& job, const Recipe& recipe, int64_t decode_cache_bytes,
                                    const Reporter& report);

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_JOB_DATA_H_
