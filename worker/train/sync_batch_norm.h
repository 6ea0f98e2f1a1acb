// Synchronised BatchNorm for multi-worker jobs (JobSpec.sync_bn), after
// torch.nn.SyncBatchNorm: in training mode every BatchNorm layer normalises
// with the mean and variance of the whole global batch, summed across the
// ranks, and updates its running statistics with them, so that N workers
// compute what one worker computes on the whole batch (but for the order of
// float sums). In eval mode nothing changes.
//
// The model's own BatchNorm2d layers (finetuned's builders, also as stored
// in a model:// model) get a training forward that calls the differentiable
// collective ft::gang_all_reduce_sum: its backward sums the gradients of the
// statistics across the ranks, as SyncBatchNorm's does. The original forward
// comes back with Restore() (and the destructor), so the saved model.pt is
// plain PyTorch and loads without finetuned.
#ifndef FT_WORKER_TRAIN_SYNC_BATCH_NORM_H_
#define FT_WORKER_TRAIN_SYNC_BATCH_NORM_H_

#include <memory>
#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "worker/train/gang.h"

namespace ft::worker {

class SyncBatchNorm {
 public:
  // Swaps the forward of every BatchNorm2d in `model`. Call it before the
  // model's first forward (a method that already ran may have inlined the
  // old one). `gang` must outlive this object; every rank of it must call
  // this on the same model. FAILED_PRECONDITION naming the layer when a
  // BatchNorm2d is not finetuned's own (a TorchScript backbone's), whose
  // forward cannot be swapped. No layers (vgg11, convnext): nothing to do,
  // layers() is 0.
  static absl::StatusOr<std::unique_ptr<SyncBatchNorm>> Install(torch::jit::Module& model, Gang* gang);
  ~SyncBatchNorm();
  SyncBatchNorm(const SyncBatchNorm&) = delete;
  SyncBatchNorm& operator=(const SyncBatchNorm&) = delete;

  // The original forwards back; idempotent.
  void Restore();
  int layers() const { return static_cast<int>(swapped_.size()); }

 private:
  struct Swapped {
    c10::ClassTypePtr type;
    torch::jit::Function* original;  // owned by the model's compilation unit
  };
  SyncBatchNorm() = default;
  std::vector<Swapped> swapped_;
  bool restored_ = false;
};

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_SYNC_BATCH_NORM_H_
