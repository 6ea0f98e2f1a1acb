#ifndef FT_WORKER_DATA_LOADER_H_
#define FT_WORKER_DATA_LOADER_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/synchronization/mutex.h"
#include "worker/data/images.h"

namespace ft::worker {

// Rank `rank`'s share [begin, end) of a batch of `n` images split between
// `ranks`: contiguous, in rank order, sizes differing by at most one.
inline std::pair<int64_t, int64_t> SplitShare(int64_t n, int rank, int ranks) {
  return {n * rank / ranks, n * (rank + 1) / ranks};
}

struct Batch {
  torch::Tensor images;  // float32 [B, 3, S, S]
  torch::Tensor labels;  // int64 [B]
  // The whole batch's images, of which this is one rank's share
  // (LoaderOptions::shards); B on one rank.
  int64_t global_size = 0;
};

struct LoaderOptions {
  int batch_size = 32;
  TransformOptions transform;
  // Seeds the per-image augmentation; the same seed gives the same batches
  // whatever the thread count.
  uint64_t seed = 0;
  int threads = 1;
  // Batches prepared ahead of the trainer.
  int prefetch = 4;
  // Pin batch memory (only meaningful when training on CUDA).
  bool pin_memory = false;
  // A last batch of one image joins the batch before it (see PlanBatches:
  // a train-mode BatchNorm cannot learn from one value per channel).
  bool merge_single_tail = false;
  // The last batch, whatever its size, joins the batch before it (a plan's
  // BatchPlan::merged_tail).
  bool merge_tail = false;
  // A multi-worker job: every batch is cut from `order` as on one worker,
  // and this loader makes share `shard` of `shards` of it (SplitShare), each
  // image with the augmentation it would have had on
  // one worker.
  int shard = 0;
  int shards = 1;
  // The pass starts at this batch of `order` (a resumed epoch): the batches
  // before it are neither decoded nor returned, and every later batch is
  // exactly what it is in a pass from the start.
  int64_t first_batch = 0;
};

// Transforms one pass over `order` into batches on background threads, in
// order, with a bounded prefetch queue. Next() blocks only when the queue is
// empty, and the time it blocks is the loader wait ("data starvation").
// One consumer thread; the destructor stops and joins the workers.
class BatchLoader {
 public:
  // `images` is not owned and must outlive the loader.
  BatchLoader(const ImageSet* images, std::vector<int64_t> order, const LoaderOptions& options);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // The next batch in order (from options.first_batch); nullopt after the last. Throws
  // std::runtime_error when a batch could not be made.
  std::optional<Batch> Next();
  int64_t num_batches() const { return num_batches_; }
  double wait_seconds() const { return wait_seconds_; }

 private:
  void Work();
  Batch Make(int64_t b);
  static int64_t CountBatches(int64_t images, const LoaderOptions& options);

  const ImageSet* images_;
  const std::vector<int64_t> order_;
  const LoaderOptions options_;
  const int64_t num_batches_;
  double wait_seconds_ = 0;

  absl::Mutex mu_;
  int64_t next_to_make_ ABSL_GUARDED_BY(mu_);
  int64_t next_to_take_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::map<int64_t, Batch> ready_ ABSL_GUARDED_BY(mu_);
  // The first failure of a worker (an image that no longer decodes).
  std::string error_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> workers_;
};

}  // namespace ft::worker

#endif  // FT_WORKER_DATA_LOADER_H_
