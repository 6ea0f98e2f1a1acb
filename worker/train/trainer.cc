#include "worker/train/trainer.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <optional>

#include <opencv2/core/version.hpp>
#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/util/status.h"
#include "worker/backbones/backbone.h"
#include "worker/data/images.h"
#include "worker/data/loader.h"
#include "common/util/sha256.h"
#include "worker/export/metadata.h"
#include "worker/export/model_card.h"
#include "worker/train/checkpoint.h"
#include "worker/train/epoch_loop.h"
#include "worker/train/evaluation.h"
#include "worker/train/gang.h"
#include "worker/train/sync_batch_norm.h"
#include "worker/train/guards.h"
#include "worker/train/job_data.h"
#include "worker/train/recipe.h"
#include "worker/train/starting_model.h"
#include "worker/train/torch_process.h"

namespace ft::worker {
namespace {

// ModelMetadata::dataset_listing_sha256: each split's samples in order, by
// class and by path relative to the dataset, so that the server's and a
// worker's copies of one archive list the same.
std::string DatasetListingSha256(const datasets::DatasetLayout& layout, const std::string& root) {
  util::Sha256 h;
  const std::string prefix = root.empty() || root.back() == '/' ? root : root + "/";
  auto add = [&](const char* split, const std::vector<datasets::Sample>& samples) {
    for (const datasets::Sample& s : samples) {
      const bool inside = !prefix.empty() && s.path.compare(0, prefix.size(), prefix) == 0;
      const std::string name = s.label >= 0 && static_cast<size_t>(s.label) < layout.classes.size()
                                   ? layout.classes[static_cast<size_t>(s.label)]
                                   : absl::StrCat(s.label);
      h.Update(absl::StrCat(split, "\t", name, "\t", inside ? s.path.substr(prefix.size()) : s.path, "\t", s.index,
                            "\n"));
    }
  };
  add("train", layout.train);
  add("val", layout.val);
  add("test", layout.test);
  return h.HexDigest();
}

// The job, in the order of torchvision's train.py: data, model, recipe,
// epochs, then the exported epoch's test and description.
absl::StatusOr<TrainResult> Train(const pb::ResolvedJob& job, TrainerOptions& options, const TrainerHooks& hooks) {
  FT_ASSIGN_OR_RETURN(const Recipe recipe, Recipe::Create(job.spec()));
  const pb::JobSpec& spec = recipe.spec();
  const Reporter report(hooks);
  // First, so that a slow machine explains itself.
  report.Info(absl::StrCat("compute: ", options.device.str(), ", ", torch::get_num_threads(), " threads, BLAS ",
                           BlasInUse(), ", allocator ", AllocatorInUse()));
  if (options.gang != nullptr) {
    report.Info(absl::StrCat("data parallel: ", options.gang->world_size(), " workers (c10d ",
                             options.gang->backend(), "), each training on ", spec.batch_size() / options.gang->world_size(),
                             "-", (spec.batch_size() + options.gang->world_size() - 1) / options.gang->world_size(),
                             " images of every batch of ", spec.batch_size()));
  }
  pb::Progress load_progress;
  load_progress.set_phase("load");
  load_progress.set_epochs(spec.epochs());
  report.Progress(load_progress);

  // Data: the same layout the server validated at submit.
  FT_ASSIGN_OR_RETURN(JobData data, LoadJobData(job, recipe, options.decode_cache_bytes, report));
  TrainResult result;
  result.metrics.set_skipped_images(data.skipped_images);
  if (report.Cancelled() || report.Preempted()) {
    // Nothing trained yet: nothing to checkpoint.
    TrainResult stopped;
    stopped.cancelled = report.Cancelled();
    stopped.preempted = !stopped.cancelled;
    return stopped;
  }

  // Model: its new head (and a backbone without weights) drawn from the job's seed.
  torch::manual_seed(static_cast<uint64_t>(spec.seed()));
  // The starting weights' file, for the model card's sha256: a model://
  // source's is the model.pt fetched for it.
  std::string weights_path = job.weights_path();
  TrainerHooks start_hooks = hooks;
  if (hooks.fetch_model) {
    start_hooks.fetch_model = [&hooks, &weights_path](const std::string& model_id) -> absl::StatusOr<std::string> {
      absl::StatusOr<std::string> path = hooks.fetch_model(model_id);
      if (path.ok()) weights_path = *path;
      return path;
    };
  }
  FT_ASSIGN_OR_RETURN(StartingModel start, BuildStartingModel(job, data.layout.classes, start_hooks, report));
  // Synchronised BatchNorm: swapped in before the model's first forward,
  // and out again after the epochs, so that the saved model is plain
  // PyTorch.
  std::unique_ptr<SyncBatchNorm> sync_bn;
  if (spec.sync_bn() && options.gang != nullptr) {
    FT_ASSIGN_OR_RETURN(sync_bn, SyncBatchNorm::Install(start.model, options.gang));
    if (sync_bn->layers() > 0) {
      report.Info(absl::StrCat("sync_bn: ", sync_bn->layers(),
                               " BatchNorm layers normalise with the statistics of the whole batch of ",
                               spec.batch_size(), ", summed across ", options.gang->world_size(), " workers"));
    } else {
      report.Log("warning", absl::StrCat("sync_bn: ", spec.backbone(), " has no BatchNorm layers; nothing to synchronise"));
    }
  }
  std::string weights_sha256;
  if (!weights_path.empty()) {
    FT_ASSIGN_OR_RETURN(weights_sha256, util::Sha256File(weights_path));
  }
  const Backbone& backbone = start.backbone;
  torch::jit::Module& model = start.model;
  model.to(options.device);

  // Recipe: the input pipeline and its normalisation, which the model
  // carries too, and the loss.
  FT_ASSIGN_OR_RETURN(const Normalization norm, recipe.ChooseNormalization(backbone.normalization, report));
  StoreNormalization(norm, model);
  LoaderOptions train_loader;
  train_loader.batch_size = spec.batch_size();
  train_loader.transform = recipe.TrainTransform(norm);
  train_loader.threads = options.loader_threads;
  train_loader.pin_memory = options.device.is_cuda();
  LoaderOptions eval_loader = train_loader;
  eval_loader.transform.train = false;
  auto loss = recipe.LossOptions(data.train.labels, data.num_classes(), options.device, report);

  // Epochs, on what the frozen stages make of the images computed once,
  // where the transform is deterministic: the whole backbone's features, or
  // the output of a partly frozen backbone's frozen stages.
  const int num_stages = static_cast<int>(backbone.stages.size());
  CachePlan cache_plan;
  cache_plan.features = recipe.CachesFeatures(num_stages);
  if (!cache_plan.features) cache_plan.prefix_stages = recipe.CachedPrefixStages(num_stages, backbone.staged);
  if (recipe.options().cache_dtype == spec::CacheDtype::kFloat16) cache_plan.dtype = torch::kHalf;
  if (options.device.is_cpu()) cache_plan.spill_dir = options.work_dir;
  if (recipe.options().cache_features == spec::CacheFeatures::kOn && !cache_plan.features &&
      cache_plan.prefix_stages == 0 && recipe.MayCache()) {
    report.Log("warning", absl::StrCat("cache_features on: ", spec.backbone(),
                                       " cannot run its stages apart, so nothing is cached and every epoch runs its "
                                       "frozen stages"));
  }
  FT_ASSIGN_OR_RETURN(EpochData epoch_data,
                      PrepareEpochData(model, backbone, data.train, data.val, train_loader, eval_loader, cache_plan,
                                       data.decode.cache_budget_bytes, spec.epochs(), options.device, report));
  const bool cached = epoch_data.cached;
  if (data.decode.cache_budget_bytes >= 0) {
    data.decode.cache_budget_bytes = std::max<int64_t>(0, data.decode.cache_budget_bytes - epoch_data.cache_bytes);
  }
  FT_ASSIGN_OR_RETURN(const PhasePlans plans,
                      PlanPhases(model, backbone, recipe, static_cast<int64_t>(data.train.images.size()), cached,
                                 report, options.gang != nullptr ? options.gang->world_size() : 1));
  EpochLoopOptions loop_options;
  loop_options.device = options.device;
  loop_options.progress_interval_seconds = options.progress_interval_seconds;
  loop_options.checkpoint_interval_seconds = spec.has_checkpoint_interval_seconds()
                                                 ? spec.checkpoint_interval_seconds()
                                                 : kDefaultCheckpointIntervalSeconds;
  loop_options.clock = options.clock;
  loop_options.max_step_points = options.max_step_points;
  loop_options.gang = options.gang;
  loop_options.fingerprint =
      TrainingFingerprint(options.job_id, spec, data.layout.classes, data.train.labels, data.val.labels);
  EpochLoop loop(recipe, loop_options, model, backbone, epoch_data, std::move(loss), plans, data.num_classes(),
                 report);
  if (!options.resume.empty()) FT_RETURN_IF_ERROR(loop.Restore(std::move(options.resume)));
  FT_ASSIGN_OR_RETURN(EpochsResult epochs, loop.Run(&result.metrics));
  if (sync_bn != nullptr) sync_bn->Restore();
  if (epochs.cancelled || epochs.preempted) {
    result.cancelled = epochs.cancelled;
    result.preempted = epochs.preempted;
    return result;
  }
  // The other ranks' part ends with the epochs: rank 0 tests and exports.
  if (options.gang != nullptr && options.gang->rank() > 0) return result;

  // The exported epoch: the best unless asked for the last, tested.
  SelectExportedEpoch(recipe, model, &epochs, &result.metrics);
  int64_t test_images = 0;
  SplitEvalOptions split_eval;
  split_eval.decode = data.decode;
  split_eval.loader = eval_loader;
  split_eval.device = options.device;
  split_eval.dataset_root = job.dataset_path();
  if (!data.layout.test.empty()) {
    FT_ASSIGN_OR_RETURN(test_images,
                        TestModel(model, data.layout.test, data.layout.classes, split_eval, report, &result.metrics));
  } else {
    // The report's confusion matrix and gallery then come from validation.
    FT_RETURN_IF_ERROR(
        DescribeValidation(model, data.val, epochs.exported_val, data.layout.val,
                                                data.layout.classes, split_eval, report, &result.metrics));
  }
  model.eval();
  model.to(torch::kCPU);
  // A model with a non-finite tensor is never stored.
  if (auto bad = FirstNonFiniteTensor(model)) {
    return absl::FailedPreconditionError(absl::StrCat("the trained model is broken: ", *bad, "; it is not stored"));
  }
  result.model = model;

  ModelMetadata meta;
  meta.job_id = options.job_id;
  meta.spec = spec;
  meta.classes = data.layout.classes;
  meta.resize_size = EvalResizeSize(spec.image_size());
  meta.mean = norm.mean;
  meta.std = norm.std;
  meta.feature_dim = backbone.feature_dim;
  meta.stages = backbone.stage_names;
  meta.val_source = data.layout.val_source;
  meta.test_source = data.layout.test_source;
  meta.train_images = static_cast<int64_t>(data.train.images.size());
  meta.val_images = static_cast<int64_t>(data.val.images.size());
  meta.test_images = test_images;
  meta.best_epoch = epochs.best_epoch;
  meta.metrics = result.metrics;
  // The misclassified images belong to the job's record (GetJob), not to the
  // model's description, nor to every ListModels answer.
  meta.metrics.clear_test_misclassified();
  meta.metrics.clear_val_misclassified();
  meta.history = std::move(epochs.history);
  meta.dataset_format = data.layout.format;
  meta.dataset_sha256 = job.dataset_digest();
  meta.dataset_listing_sha256 = DatasetListingSha256(data.layout, job.dataset_path());
  if (!job.weights_model_id().empty()) {
    meta.weights_file = absl::StrCat(job.weights_model_id(), "/model.pt");
  } else if (!weights_path.empty()) {
    meta.weights_file = std::filesystem::path(weights_path).filename().string();
  }
  meta.weights_sha256 = weights_sha256;
  meta.software = {FinetunedVersion(), TORCH_VERSION, CV_VERSION, BlasInUse()};
  result.metadata_json = MetadataJson(meta);
  result.metadata = std::move(meta);
  return result;
}

// Train, its exceptions as statuses.
absl::StatusOr<TrainResult> TrainCaught(const pb::ResolvedJob& job, TrainerOptions& options,
                                        const TrainerHooks& hooks) {
  try {
    return Train(job, options, hooks);
  } catch (const GangError& e) {
    // Not the job's fault: the attempt is over, and the gang leased again.
    return absl::UnavailableError(e.what());
  } catch (const c10::Error& e) {
    // A collective inside the model (sync_bn) failed: the interpreter
    // rethrew its GangError as its own.
    if (options.gang != nullptr && options.gang->failed()) {
      return absl::UnavailableError(absl::StrCat("a collective across the workers failed: ", e.what_without_backtrace()));
    }
    return absl::InternalError(absl::StrCat("LibTorch: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("training failed: ", e.what()));
  }
}

}  // namespace

absl::StatusOr<TrainResult> RunTraining(const pb::ResolvedJob& job, TrainerOptions options,
                                        const TrainerHooks& hooks) {
  absl::StatusOr<TrainResult> result = TrainCaught(job, options, hooks);
  if (options.gang == nullptr || result.ok()) return result;
  if (!options.gang->failed()) {
    // This rank's own failure: its peers' next collective fails, and they
    // end with this reason.
    options.gang->ReportFailure(result.status());
  } else if (std::optional<absl::Status> peer = options.gang->PeerFailure()) {
    // The collective failed because a peer ended for its own reason.
    return *std::move(peer);
  }
  return result;
}

}  // namespace ft::worker
