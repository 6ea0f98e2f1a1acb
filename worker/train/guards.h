// What keeps a job from ending SUCCEEDED with a broken model: the rule for
// a last batch of one image, the divergence criterion, and the check that
// no tensor is NaN or infinite.
#ifndef FT_WORKER_TRAIN_GUARDS_H_
#define FT_WORKER_TRAIN_GUARDS_H_

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ft::worker {

// How one epoch's images are cut into batches.
struct BatchPlan {
  int64_t num_batches = 0;
  int64_t last_batch_size = 0;
  // The last batch would have held one image, which joined the batch before.
  bool merged_tail = false;
};

// Cuts `images` into batches of `batch_size`. `single_value_batchnorm` names
// the first train-mode BatchNorm that a batch of one image would leave with
// one value per channel (its input is 1x1 at `image_size`); empty when there
// is none. Such a layer's running variance divides by N*H*W - 1 = 0 and turns
// NaN, so with one:
//  - a last batch of one image is merged into the batch before it;
//  - batch_size 1 is INVALID_ARGUMENT, naming the layer;
//  - a training split of one image is FAILED_PRECONDITION, naming the layer.
// Without one the batches are plain (the last may hold one image).
// With `ranks` > 1 (a multi-worker job) each batch is split into `ranks`
// shares (SplitShare in data/loader.h), and a last batch whose smallest share
// would be empty,
// or of one image with such a layer, is merged into the batch before it; a
// training split too small to give every rank a share is
// FAILED_PRECONDITION.
absl::StatusOr<BatchPlan> PlanBatches(int64_t images, int64_t batch_size, const std::string& single_value_batchnorm,
                                      int image_size, int ranks = 1);

// The divergence criterion, fed one training step at a time. Training has
// diverged when
//  - a step's loss is NaN or infinite, or
//  - the mean loss of the last kWindow steps exceeds kFactor times where
//    training started: the larger of the first step's loss (taken before any
//    update) and ln(classes), the loss of a uniform guess, so that a start
//    that is already good is not held to an impossible bar.
// The factor is high on purpose. Networks with BatchNorm trained from scratch
// at a high learning rate often spike far above their start and recover:
// measured with PyTorch on 3-class shapes, resnet18 with SGD at lr 0.3 peaked
// at 118x its start (10-step mean) and ended at a loss of 0.88. A run at
// 1000x (cross-entropy in the thousands: logits in the thousands, softmax
// saturated) has not been seen to come back; lr 1 reached 1.5e5, lr 10 1e13.
// The error says where, what, the learning rate, and what to try.
class DivergenceMonitor {
 public:
  static constexpr int kWindow = 10;
  static constexpr double kFactor = 1000.0;

  explicit DivergenceMonitor(int64_t num_classes);

  // OK, or FAILED_PRECONDITION "training diverged at epoch E, step S: ...".
  absl::Status Observe(int epoch, int64_t step, double loss, double learning_rate);

  // Where training started (0 before the first step).
  double reference() const { return reference_; }

  // All that the monitor has seen, as a checkpoint keeps it: a monitor
  // given another's state decides exactly as that one would.
  struct State {
    double reference = 0;
    std::vector<double> window;  // oldest first
    double window_sum = 0;
  };
  State state() const { return {reference_, {window_.begin(), window_.end()}, window_sum_}; }
  void set_state(const State& state) {
    reference_ = state.reference;
    window_.assign(state.window.begin(), state.window.end());
    window_sum_ = state.window_sum;
  }

 private:
  const double uniform_loss_;
  double reference_ = 0;
  std::deque<double> window_;
  double window_sum_ = 0;
};

// The advice that ends every divergence message.
std::string DivergenceAdvice(double learning_rate);

// The first floating-point parameter or buffer of `module` (in its own
// named_parameters, then named_buffers order) that holds a NaN or an
// infinity, as "backbone.layer4.1.bn2.running_var holds NaN"; nullopt when
// every one is finite.
std::optional<std::string> FirstNonFiniteTensor(const torch::jit::Module& module);

// The first BatchNorm of `model`, as its train/eval flags stand, that a
// forward pass of one image at `image_size` leaves with a non-finite running
// variance, i.e. a train-mode BatchNorm whose input is 1x1 there; its name in
// `model` ("backbone.layer4.0.bn1"), or "" when none is. Runs one forward pass
// on the model's device without gradients, and restores every buffer and the
// CPU random state, so training proceeds exactly as without it. Errors are
// INTERNAL with LibTorch's message.
absl::StatusOr<std::string> SingleValueBatchNorm(torch::jit::Module& model, int image_size);

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_GUARDS_H_
