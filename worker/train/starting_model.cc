#include "worker/train/starting_model.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/util/status.h"
#include "worker/backbones/load_weights.h"
#include "worker/train/guards.h"

namespace ft::worker {
namespace {

absl::Status PrepareModel(const pb::ResolvedJob& job, const std::vector<std::string>& classes,
                          const TrainerHooks& hooks, const Reporter& report, Backbone* backbone,
                          torch::jit::Module* model) {
  const pb::JobSpec& spec = job.spec();
  if (spec.backbone() == kTorchScriptBackbone && job.weights_model_id().empty()) {
    FT_ASSIGN_OR_RETURN(*backbone, LoadTorchScriptBackbone(job.weights_path(), spec.image_size()));
    report.Info(absl::StrCat("TorchScript backbone from ", job.weights_path(), ": ", backbone->feature_dim,
                             "-d features, stages ", absl::StrJoin(backbone->stage_names, ", ")));
    *model = BuildClassifier(backbone->module, backbone->feature_dim, classes);
  } else if (!job.weights_path().empty()) {
    FT_ASSIGN_OR_RETURN(*backbone, BuildBackbone(spec.backbone()));
    FT_ASSIGN_OR_RETURN(size_t count,
                        LoadBackboneWeights(*backbone, job.weights_path(), spec.weights_uri() == "pretrained"));
    report.Info(absl::StrCat("loaded ", count, " tensors from ", job.weights_path()));
    *model = BuildClassifier(backbone->module, backbone->feature_dim, classes);
  } else if (!job.weights_model_id().empty()) {
    if (spec.backbone() != kTorchScriptBackbone) {
      FT_ASSIGN_OR_RETURN(*backbone, BuildBackbone(spec.backbone()));
    }
    if (!hooks.fetch_model) return absl::InternalError("no way to fetch model:// weights");
    FT_ASSIGN_OR_RETURN(std::string path, hooks.fetch_model(job.weights_model_id()));
    torch::jit::Module source = torch::jit::load(path);
    if (!source.hasattr("backbone") || !source.hasattr("head") || !source.hasattr("classes")) {
      return absl::FailedPreconditionError(
          absl::StrCat("model ", job.weights_model_id(), " is not a finetuned classifier"));
    }
    backbone->module = source.attr("backbone").toModule();
    FT_ASSIGN_OR_RETURN(backbone->normalization,
                        NormalizationFromModule(source, absl::StrCat("model ", job.weights_model_id())));
    if (spec.backbone() == kTorchScriptBackbone) {
      backbone->name = kTorchScriptBackbone;
      backbone->feature_dim = source.attr("head").toModule().attr("weight").toTensor().size(1);
      for (const auto& child : backbone->module.named_children()) {
        backbone->stage_names.push_back(child.name);
        backbone->stages.push_back({child.name});
      }
    }
    std::vector<std::string> source_classes;
    for (const auto& c : source.attr("classes").toListRef()) source_classes.push_back(c.toStringRef());
    if (source_classes == classes) {
      *model = BuildClassifierWithHead(backbone->module, source.attr("head").toModule(), classes);
      report.Info(absl::StrCat("continuing from model ", job.weights_model_id(), " with its head"));
    } else {
      *model = BuildClassifier(backbone->module, backbone->feature_dim, classes);
      report.Info(absl::StrCat("transferring the backbone of model ", job.weights_model_id(), " (",
                               source_classes.size(), " classes) to a new ", classes.size(), "-class head"));
    }
  } else {
    FT_ASSIGN_OR_RETURN(*backbone, BuildBackbone(spec.backbone()));
    *model = BuildClassifier(backbone->module, backbone->feature_dim, classes);
  }
  const int stages = static_cast<int>(backbone->stages.size());
  for (int depth : {spec.freeze_depth(), spec.unfreeze_at() > 0 ? spec.finetune_freeze_depth() : 0}) {
    if (depth > stages) {
      return absl::InvalidArgumentError(absl::StrCat(
          "freeze depth ", depth, " is deeper than ",
          spec.backbone() == kTorchScriptBackbone ? "the TorchScript backbone's " : spec.backbone() + "'s ", stages,
          spec.backbone() == kTorchScriptBackbone ? " top-level children (" : " stages (",
          absl::StrJoin(backbone->stage_names, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<StartingModel> BuildStartingModel(const pb::ResolvedJob& job, const std::vector<std::string>& classes,
                                                 const TrainerHooks& hooks, const Reporter& report) {
  StartingModel start;
  FT_RETURN_IF_ERROR(PrepareModel(job, classes, hooks, report, &start.backbone, &start.model));
  if (auto bad = FirstNonFiniteTensor(start.model)) {
    const pb::JobSpec& spec = job.spec();
    return absl::FailedPreconditionError(
        absl::StrCat("the starting weights (", spec.weights_uri().empty() ? "none" : spec.weights_uri(),
                     ") are broken: ", *bad));
  }
  return start;
}

}  // namespace ft::worker
