// A job's training recipe, read from its spec as torchvision's
// references/classification/train.py reads its arguments: the optimiser, the
// learning-rate schedule, the two phases of fine-tuning, the loss, the train
// transform and the input normalisation. The spec's string options are
// parsed once, here, with the server's own parser (common/spec).
#ifndef FT_WORKER_TRAIN_RECIPE_H_
#define FT_WORKER_TRAIN_RECIPE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "common/spec/spec_options.h"
#include "finetune/v1/finetune.pb.h"
#include "worker/backbones/backbone.h"
#include "worker/data/images.h"
#include "worker/train/hooks.h"

namespace ft::worker {

// One phase of training: the first, or the fine-tuning phase from
// unfreeze_at on.
struct TrainingPhase {
  int freeze_depth = 0;
  double base_lr = 0;  // the schedule's rate at its top
};

// Immutable after Create; cheap to copy (one JobSpec).
class Recipe {
 public:
  // INVALID_ARGUMENT "<field>: unknown ..." for a string option that is not
  // one of its names; an empty option is its default.
  static absl::StatusOr<Recipe> Create(const pb::JobSpec& spec);

  const pb::JobSpec& spec() const { return spec_; }
  const spec::SpecOptions& options() const { return options_; }

  // The phase training starts in, and the fine-tuning phase.
  TrainingPhase first_phase() const;
  TrainingPhase finetune_phase() const;
  // True when epoch `epoch` (1-based) starts the fine-tuning phase.
  bool StartsFineTuning(int epoch) const;
  // True when the fine-tuning phase starts within the job's epochs.
  bool HasFineTuning() const;
  // The epochs of the first phase.
  int FirstPhaseEpochs() const;

  // A fresh optimiser over `params` at rate `lr`: SGD (with the spec's
  // momentum and Nesterov flag), AdamW or Adam, with the spec's weight decay;
  // the fused ones (fused_optimizers.h), whose state is LibTorch's.
  std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(std::vector<torch::Tensor> params, double lr) const;

  // The learning rate at fractional epoch `t` (0-based) of a phase whose
  // base rate is `base`: linear warm-up, then constant, step or cosine.
  double LearningRateAt(double t, double base) const;

  // The input normalisation: the job's mean and std, else what the weights
  // say (`from_weights`), else ImageNet's; logged through `report`.
  // FAILED_PRECONDITION when the job's values are not 3 finite means and 3
  // positive stds.
  absl::StatusOr<Normalization> ChooseNormalization(const std::optional<Normalization>& from_weights,
                                                    const Reporter& report) const;

  // The train transform with `norm`: random resized crop and flip (the
  // crop's scale from `augment`; none is the eval transform), colour jitter,
  // rotation.
  TransformOptions TrainTransform(const Normalization& norm) const;

  // The cross-entropy options: label smoothing, and with class_weights
  // balanced, weight total / (classes * count) per class, counted over
  // `train_labels`, placed on `device` and logged through `report`.
  torch::nn::functional::CrossEntropyFuncOptions LossOptions(const std::vector<int64_t>& train_labels,
                                                             int64_t num_classes, torch::Device device,
                                                             const Reporter& report) const;

  // True when the epochs may run on backbone features computed once: the
  // whole backbone (of `backbone_stages` stages) stays frozen, the train
  // transform is deterministic, and cache_features is not off.
  bool CachesFeatures(int backbone_stages) const;
  // The number of leading stages whose output the epochs may compute once
  // and train the rest on (a partly frozen backbone): freeze_depth, when it
  // is between 1 and backbone_stages - 1, `staged` (the backbone can run
  // its stages apart), the train transform is deterministic, there is no
  // fine-tuning phase, and cache_features is not off; else 0.
  int CachedPrefixStages(int backbone_stages, bool staged) const;

  bool skips_bad_images() const { return options_.on_bad_image == spec::OnBadImage::kSkip; }
  bool exports_last_epoch() const { return options_.export_weights == spec::ExportWeights::kLast; }

  // What either cache needs: cache_features not off, a deterministic train
  // transform (augment none), and one phase (no unfreeze_at).
  bool MayCache() const;

 private:
  Recipe(const pb::JobSpec& spec, const spec::SpecOptions& options) : spec_(spec), options_(options) {}

  pb::JobSpec spec_;
  spec::SpecOptions options_;
};

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_RECIPE_H_
