// The model a job starts from: its backbone (built, loaded from a weights
// file, a TorchScript file or a stored model) and a head for its classes.
#ifndef FT_WORKER_TRAIN_STARTING_MODEL_H_
#define FT_WORKER_TRAIN_STARTING_MODEL_H_

#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "finetune/v1/worker.pb.h"
#include "worker/backbones/backbone.h"
#include "worker/train/hooks.h"

namespace ft::worker {

struct StartingModel {
  Backbone backbone;
  torch::jit::Module model;  // a classifier (BuildClassifier), on the CPU
};

// Builds the job's model for `classes`: a model:// source keeps its head
// when its classes are the same, and gives its backbone to a new head
// otherwise. Says what it loaded through `report`. Draws from the torch
// random stream (new heads, random backbones): seed it first.
// INVALID_ARGUMENT when a freeze depth is deeper than the backbone's stages;
// FAILED_PRECONDITION when a model:// source is not a finetuned classifier
// or the starting weights hold a NaN or an infinity; the loaders' errors.
// Throws what LibTorch throws.
absl::StatusOr<StartingModel> BuildStartingModel(const pb::ResolvedJob& job, const std::vector<std::string>& classes,
                                                 const TrainerHooks& hooks, const Reporter& report);

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_STARTING_MODEL_H_
