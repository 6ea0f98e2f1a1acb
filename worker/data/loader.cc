#include "worker/data/loader.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <stdexcept>
#include <string>

namespace ft::worker {

BatchLoader::BatchLoader(const ImageSet* images, std::vector<int64_t> order,
                         const LoaderOptions& options)
    : images_(images),
      order_(std::move(order)),
      options_(options),
      num_batches_(CountBatches(static_cast<int64_t>(order_.size()), options)),
      next_to_make_(std::clamp<int64_t>(options.first_batch, 0, num_batches_)),
      next_to_take_(next_to_make_) {
  const int threads = std::max(1, options.threads);
  for (int t = 0; t < threads; ++t) workers_.emplace_back([this] { Work(); });
}

BatchLoader::~BatchLoader() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (auto& t : workers_) t.join();
}

int64_t BatchLoader::CountBatches(int64_t images, const LoaderOptions& options) {
  const int64_t batches = (images + options.batch_size - 1) / options.batch_size;
  const bool single_tail = batches > 1 && images % options.batch_size == 1;
  if (options.merge_tail && batches > 1) return batches - 1;
  return options.merge_single_tail && single_tail ? batches - 1 : batches;
}

Batch BatchLoader::Make(int64_t b) {
  const int64_t images = static_cast<int64_t>(order_.size());
  const int64_t begin = b * options_.batch_size;
  // The last batch takes whatever is left (one more image when merged).
  const int64_t global_end =
      b == num_batches_ - 1 ? images : std::min<int64_t>(begin + options_.batch_size, images);
  // This rank's share of it (all of it on one rank).
  const int64_t global_n = global_end - begin;
  const auto [share_begin, share_end] = SplitShare(global_n, options_.shard, std::max(1, options_.shards));
  const int64_t n = share_end - share_begin;
  const int s = options_.transform.image_size;
  auto opts = torch::TensorOptions().dtype(torch::kFloat32).pinned_memory(options_.pin_memory);
  Batch batch{torch::empty({n, 3, s, s}, opts), torch::empty({n}, torch::kInt64), global_n};
  float* out = batch.images.data_ptr<float>();
  int64_t* labels = batch.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t position = begin + share_begin + i;
    const int64_t idx = order_[static_cast<size_t>(position)];
    // A per-image stream: deterministic whatever the thread (or the rank)
    // that makes it.
    std::mt19937_64 rng(options_.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(position));
    TransformInto(images_->Get(static_cast<size_t>(idx)), options_.transform, &rng, out + i * 3 * s * s);
    labels[i] = images_->labels[static_cast<size_t>(idx)];
  }
  return batch;
}

void BatchLoader::Work() {
  while (true) {
    int64_t b;
    {
      absl::MutexLock lock(&mu_);
      auto can_make = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || next_to_make_ >= num_batches_ ||
               next_to_make_ < next_to_take_ + options_.prefetch;
      };
      mu_.Await(absl::Condition(&can_make));
      if (stopping_ || next_to_make_ >= num_batches_) return;
      b = next_to_make_++;
    }
    std::optional<Batch> batch;
    std::string error;
    try {
      batch = Make(b);
    } catch (const std::exception& e) {
      error = e.what();
    }
    absl::MutexLock lock(&mu_);
    if (!batch) {
      // Next() reports it on the trainer's thread.
      if (error_.empty()) error_ = error.empty() ? "the loader failed" : error;
      return;
    }
    ready_.emplace(b, *std::move(batch));
  }
}

std::optional<Batch> BatchLoader::Next() {
  absl::MutexLock lock(&mu_);
  if (next_to_take_ >= num_batches_) return std::nullopt;
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return ready_.count(next_to_take_) > 0 || !error_.empty();
  };
  const auto start = std::chrono::steady_clock::now();
  mu_.Await(absl::Condition(&ready));
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (ready_.count(next_to_take_) == 0) throw std::runtime_error(error_);
  auto it = ready_.find(next_to_take_);
  Batch batch = std::move(it->second);
  ready_.erase(it);
  ++next_to_take_;
  return batch;
}

}  // namespace ft::worker
