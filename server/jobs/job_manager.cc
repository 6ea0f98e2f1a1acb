#include "server/jobs/job_manager.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "proto/util/log.h"
#include "proto/util/status.h"
#include "server/datasets/layout.h"
#include "server/datasets/resolver.h"
#include "worker/catalog/catalog.h"

namespace ft::server {
namespace fs = std::filesystem;
namespace {

constexpr int kDefaultEpochs = 3;
constexpr int kMaxEpochs = 10000;
constexpr int kDefaultBatchSize = 32;
constexpr int kMaxBatchSize = 4096;
constexpr int kDefaultImageSize = 224;
constexpr int kMinImageSize = 16;
constexpr int kMaxImageSize = 1024;
constexpr float kDefaultLearningRate = 1e-3f;
constexpr float kDefaultValSplit = 0.2f;

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

// Defaults are applied here, once, so that what is stored and shown is what runs.
absl::Status ValidateFields(pb::JobSpec* spec, const catalog::BackboneInfo** backbone) {
  if (spec->backbone().empty()) return Invalid("backbone", "is required");
  *backbone = catalog::FindBackbone(spec->backbone());
  if (*backbone == nullptr) {
    return Invalid("backbone", absl::StrCat("unknown backbone '", spec->backbone(),
                                            "'; known: ", catalog::BackboneNames()));
  }
  if (spec->epochs() < 0 || spec->epochs() > kMaxEpochs) {
    return Invalid("epochs", absl::StrCat("must be between 1 and ", kMaxEpochs, ", got ", spec->epochs()));
  }
  if (spec->epochs() == 0) spec->set_epochs(kDefaultEpochs);
  if (spec->batch_size() < 0 || spec->batch_size() > kMaxBatchSize) {
    return Invalid("batch_size",
                   absl::StrCat("must be between 1 and ", kMaxBatchSize, ", got ", spec->batch_size()));
  }
  if (spec->batch_size() == 0) spec->set_batch_size(kDefaultBatchSize);
  if (spec->image_size() == 0) spec->set_image_size(kDefaultImageSize);
  if (spec->image_size() < kMinImageSize || spec->image_size() > kMaxImageSize) {
    return Invalid("image_size", absl::StrCat("must be between ", kMinImageSize, " and ",
                                              kMaxImageSize, ", got ", spec->image_size()));
  }
  if (!std::isfinite(spec->learning_rate()) || spec->learning_rate() < 0 ||
      spec->learning_rate() > 10) {
    return Invalid("learning_rate",
                   absl::StrCat("must be a positive number up to 10, got ", spec->learning_rate()));
  }
  if (spec->learning_rate() == 0) spec->set_learning_rate(kDefaultLearningRate);
  if (spec->optimizer().empty()) spec->set_optimizer("adam");
  if (spec->optimizer() != "adam" && spec->optimizer() != "sgd" && spec->optimizer() != "adamw") {
    return Invalid("optimizer",
                   absl::StrCat("unknown optimizer '", spec->optimizer(), "'; known: adam, adamw, sgd"));
  }
  const int stages = static_cast<int>((*backbone)->stages.size());
  if (catalog::IsTorchScriptBackbone(spec->backbone())) {
    // Its stages are the file's top-level children; the worker checks the depth.
    if (spec->freeze_depth() < -1) {
      return Invalid("freeze_depth", absl::StrCat("must be -1 (all) or >= 0, got ", spec->freeze_depth()));
    }
  } else if (spec->freeze_depth() < -1 || spec->freeze_depth() > stages) {
    return Invalid("freeze_depth",
                   absl::StrCat("must be -1 (all) or between 0 and ", stages, " (", spec->backbone(),
                                " stages: ", absl::StrJoin((*backbone)->stages, ", "), "), got ",
                                spec->freeze_depth()));
  }
  if (!std::isfinite(spec->val_split()) || spec->val_split() < 0 || spec->val_split() >= 1) {
    return Invalid("val_split", absl::StrCat("must be in [0, 1), got ", spec->val_split()));
  }
  if (spec->val_split() == 0) spec->set_val_split(kDefaultValSplit);
  if (spec->augment().empty()) spec->set_augment("standard");
  if (spec->augment() != "standard" && spec->augment() != "light" && spec->augment() != "none") {
    return Invalid("augment", absl::StrCat("unknown augmentation '", spec->augment(),
                                           "'; known: standard, light, none"));
  }
  if (spec->seed() < 0) return Invalid("seed", "must be non-negative");
  auto in_range = [](float v, float lo, float hi) { return std::isfinite(v) && v >= lo && v <= hi; };
  if (!in_range(spec->color_jitter(), 0, 1)) {
    return Invalid("color_jitter", absl::StrCat("must be in [0, 1], got ", spec->color_jitter()));
  }
  if (!in_range(spec->rotation_degrees(), 0, 180)) {
    return Invalid("rotation_degrees", absl::StrCat("must be in [0, 180], got ", spec->rotation_degrees()));
  }
  if ((spec->color_jitter() > 0 || spec->rotation_degrees() > 0) && spec->augment() == "none") {
    return Invalid(spec->color_jitter() > 0 ? "color_jitter" : "rotation_degrees",
                   "needs --augment standard or light (augment none trains on the eval transform)");
  }
  if (spec->mean_size() != spec->std_size() || (spec->mean_size() != 0 && spec->mean_size() != 3)) {
    return Invalid(spec->mean_size() != 3 ? "mean" : "std",
                   absl::StrCat("mean and std need 3 values each (R, G, B), got ", spec->mean_size(), " and ",
                                spec->std_size()));
  }
  for (int c = 0; c < spec->mean_size(); ++c) {
    if (!in_range(spec->mean(c), -10, 10)) {
      return Invalid("mean", absl::StrCat("values must be in [-10, 10], got ", spec->mean(c)));
    }
    if (!in_range(spec->std(c), 1e-6f, 100)) {
      return Invalid("std", absl::StrCat("values must be positive (and at most 100), got ", spec->std(c)));
    }
  }
  if (!in_range(spec->weight_decay(), 0, 1)) {
    return Invalid("weight_decay", absl::StrCat("must be in [0, 1], got ", spec->weight_decay()));
  }
  if (!in_range(spec->label_smoothing(), 0, 0.99f)) {
    return Invalid("label_smoothing", absl::StrCat("must be in [0, 0.99], got ", spec->label_smoothing()));
  }
  if (!spec->class_weights().empty() && spec->class_weights() != "balanced" && spec->class_weights() != "none") {
    return Invalid("class_weights", absl::StrCat("unknown '", spec->class_weights(), "'; known: none, balanced"));
  }
  if (!in_range(spec->grad_clip_norm(), 0, 1e6f)) {
    return Invalid("grad_clip_norm", absl::StrCat("must be >= 0, got ", spec->grad_clip_norm()));
  }
  if (spec->lr_schedule().empty()) spec->set_lr_schedule("constant");
  if (spec->lr_schedule() != "constant" && spec->lr_schedule() != "step" && spec->lr_schedule() != "cosine") {
    return Invalid("lr_schedule", absl::StrCat("unknown '", spec->lr_schedule(), "'; known: constant, step, cosine"));
  }
  if (spec->warmup_epochs() < 0 || spec->warmup_epochs() > spec->epochs()) {
    return Invalid("warmup_epochs", absl::StrCat("must be in [0, epochs], got ", spec->warmup_epochs()));
  }
  if (spec->lr_step_epochs() < 0) return Invalid("lr_step_epochs", "must be >= 0");
  if (spec->lr_step_epochs() == 0) spec->set_lr_step_epochs(std::max(1, spec->epochs() / 3));
  if (spec->lr_gamma() == 0) spec->set_lr_gamma(0.1f);
  if (!in_range(spec->lr_gamma(), 1e-6f, 1)) return Invalid("lr_gamma", "must be in (0, 1]");
  if (spec->momentum() == 0 && spec->optimizer() == "sgd") spec->set_momentum(0.9f);
  if (!in_range(spec->momentum(), 0, 0.9999f)) return Invalid("momentum", "must be in [0, 1)");
  if (spec->nesterov() && (spec->optimizer() != "sgd" || spec->momentum() <= 0)) {
    return Invalid("nesterov", "needs --optimizer sgd with momentum > 0");
  }
  if (spec->unfreeze_at() < 0 || spec->unfreeze_at() > spec->epochs()) {
    return Invalid("unfreeze_at", absl::StrCat("must be an epoch in [1, epochs] or 0 (off), got ", spec->unfreeze_at()));
  }
  if (spec->unfreeze_at() > 0) {
    if (spec->finetune_lr_mult() == 0) spec->set_finetune_lr_mult(0.1f);
    if (!in_range(spec->finetune_lr_mult(), 1e-6f, 100)) return Invalid("finetune_lr_mult", "must be in (0, 100]");
    if (spec->finetune_freeze_depth() < -1 ||
        (!catalog::IsTorchScriptBackbone(spec->backbone()) && spec->finetune_freeze_depth() > stages)) {
      return Invalid("finetune_freeze_depth", absl::StrCat("must be -1 (all) or between 0 and ", stages));
    }
  }
  if (spec->early_stopping_patience() < 0) return Invalid("early_stopping_patience", "must be >= 0");
  if (spec->cache_features().empty()) spec->set_cache_features("auto");
  if (spec->cache_features() != "auto" && spec->cache_features() != "on" && spec->cache_features() != "off") {
    return Invalid("cache_features", "must be auto, on or off");
  }
  if (spec->cache_features() == "on" &&
      (spec->freeze_depth() != -1 || spec->augment() != "none" || spec->unfreeze_at() > 0)) {
    return Invalid("cache_features", "on needs --freeze-depth all, --augment none and no --unfreeze-at");
  }
  if (spec->export_weights().empty()) spec->set_export_weights("best");
  if (spec->export_weights() != "best" && spec->export_weights() != "last") {
    return Invalid("export_weights", "must be best or last");
  }
  if (spec->on_bad_image().empty()) spec->set_on_bad_image("fail");
  if (spec->on_bad_image() != "fail" && spec->on_bad_image() != "skip") {
    return Invalid("on_bad_image", "must be fail or skip");
  }
  if (spec->name().size() > 256) return Invalid("name", "is longer than 256 characters");
  if (spec->weights_uri().empty()) spec->set_weights_uri("none");
  return absl::OkStatus();
}

std::vector<std::string> PretrainedDirs(const std::string& weights_dir) {
  std::vector<std::string> dirs;
  if (!weights_dir.empty()) dirs.push_back(weights_dir);
  if (const char* th = std::getenv("TORCH_HOME"); th && *th) {
    dirs.push_back(absl::StrCat(th, "/hub/checkpoints"));
  } else if (const char* home = std::getenv("HOME"); home && *home) {
    dirs.push_back(absl::StrCat(home, "/.cache/torch/hub/checkpoints"));
  }
  return dirs;
}

}  // namespace

JobManager::JobManager(const JobManagerOptions& options, JobStore* store, EventHub* hub,
                       FilesystemModelStore* models)
    : options_(options), store_(store), hub_(hub), models_(models) {}

JobManager::~JobManager() { Shutdown(); }

void JobManager::Start() { sweeper_ = std::thread([this] { SweepLoop(); }); }

void JobManager::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    ++queue_generation_;
  }
  if (sweeper_.joinable()) sweeper_.join();
}

absl::StatusOr<pb::ResolvedJob> JobManager::Resolve(const pb::JobSpec& in) {
  pb::ResolvedJob resolved;
  pb::JobSpec* spec = resolved.mutable_spec();
  *spec = in;
  const catalog::BackboneInfo* backbone = nullptr;
  FT_RETURN_IF_ERROR(ValidateFields(spec, &backbone));

  // Weights, before the (slower) dataset scan.
  const std::string& w = spec->weights_uri();
  if (catalog::IsTorchScriptBackbone(spec->backbone()) && !absl::StartsWith(w, "file://")) {
    return Invalid("weights_uri", "backbone torchscript takes its module from --weights file:///path.pt");
  }
  if (w == "none") {
  } else if (w == "pretrained") {
    std::vector<std::string> tried;
    for (const auto& dir : PretrainedDirs(options_.weights_dir)) {
      for (const auto& file : backbone->pretrained_files) {
        std::error_code ec;
        const fs::path p = fs::path(dir) / file;
        if (fs::is_regular_file(p, ec)) {
          resolved.set_weights_path(p.string());
          break;
        }
        tried.push_back(p.string());
      }
      if (!resolved.weights_path().empty()) break;
    }
    if (resolved.weights_path().empty()) {
      return absl::NotFoundError(absl::StrCat(
          "weights_uri: no pretrained weights for ", spec->backbone(), "; looked for ",
          absl::StrJoin(tried, ", "), ". Put torchvision's file in --weights-dir"));
    }
  } else if (absl::StartsWith(w, "model://")) {
    const std::string id = w.substr(strlen("model://"));
    auto model = models_->Get(id);
    if (!model.ok()) {
      if (absl::IsInvalidArgument(model.status())) {
        return Invalid("weights_uri", std::string(model.status().message()));
      }
      return absl::NotFoundError(absl::StrCat("weights_uri: no model with id '", id, "'"));
    }
    if (model->backbone() != spec->backbone()) {
      return Invalid("weights_uri", absl::StrCat("model ", id, " is a ", model->backbone(),
                                                 ", but the job's backbone is ", spec->backbone()));
    }
    resolved.set_weights_model_id(id);
  } else if (absl::StartsWith(w, "file://")) {
    FT_ASSIGN_OR_RETURN(datasets::DatasetUri uri, datasets::ParseDatasetUri(w, "weights_uri"));
    std::vector<std::string> roots = options_.dataset_roots;
    if (!options_.weights_dir.empty()) roots.push_back(options_.weights_dir);
    FT_ASSIGN_OR_RETURN(std::string path, datasets::ResolveInside(uri.path, roots, "weights file"));
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) {
      return Invalid("weights_uri", absl::StrCat(uri.path, " is not a file"));
    }
    resolved.set_weights_path(path);
  } else {
    return Invalid("weights_uri", absl::StrCat("unsupported weights '", w,
                                               "'; use none, pretrained, file:///path or model://ID"));
  }

  FT_ASSIGN_OR_RETURN(datasets::DatasetUri uri,
                      datasets::ParseDatasetUri(spec->dataset_uri(), "dataset_uri"));
  FT_ASSIGN_OR_RETURN(datasets::DatasetLocation location,
                      datasets::LocateDataset(uri, options_.dataset_roots, options_.dataset_store));
  const std::string& path = location.path;
  uri.options.val_split = spec->val_split();
  uri.options.seed = static_cast<uint64_t>(spec->seed());
  FT_ASSIGN_OR_RETURN(datasets::DatasetLayout layout, datasets::ScanDataset(path, uri.options));
  resolved.set_dataset_path(path);
  resolved.set_dataset_digest(location.digest);
  resolved.set_dataset_format(layout.format);
  for (const auto& c : uri.options.classes) resolved.add_dataset_classes(c);
  resolved.set_max_per_class(uri.options.max_per_class);
  resolved.set_max_val_per_class(uri.options.max_val_per_class);
  resolved.set_val_from_split(uri.options.val_from_split);
  return resolved;
}

absl::StatusOr<pb::Job> JobManager::Submit(const pb::JobSpec& spec, const std::string& request_id) {
  if (request_id.size() > 128) return Invalid("request_id", "is longer than 128 characters");
  FT_ASSIGN_OR_RETURN(pb::ResolvedJob resolved, Resolve(spec));
  FT_ASSIGN_OR_RETURN(pb::Job job, store_->CreateJob(resolved, request_id));
  if (observer_) observer_->OnSubmitted();
  util::Log("info", "finetuned", "job queued",
            {{"job_id", job.id()}, {"request_id", request_id}, {"backbone", job.spec().backbone()},
             {"dataset", job.spec().dataset_uri()}});
  hub_->Notify(job.id());
  WakeLeasers();
  return job;
}

absl::StatusOr<pb::Job> JobManager::Get(const std::string& job_id) {
  if (job_id.empty()) return Invalid("job_id", "is required");
  return store_->GetJob(job_id);
}

absl::StatusOr<std::vector<pb::Job>> JobManager::List(const std::vector<pb::JobState>& states,
                                                      int limit) {
  if (limit <= 0) limit = 100;
  return store_->ListJobs(states, std::min(limit, 10000));
}

absl::StatusOr<pb::Job> JobManager::Cancel(const std::string& job_id) {
  if (job_id.empty()) return Invalid("job_id", "is required");
  FT_ASSIGN_OR_RETURN(pb::Job before, store_->GetJob(job_id));
  FT_ASSIGN_OR_RETURN(pb::Job job, store_->RequestCancel(job_id));
  if (before.state() == pb::QUEUED && job.state() == pb::CANCELLED) ReportFinished(job);
  hub_->Notify(job_id);
  return job;
}

void JobManager::WakeLeasers() {
  absl::MutexLock lock(&mu_);
  ++queue_generation_;
}

absl::StatusOr<std::optional<LeasedJob>> JobManager::Lease(const pb::WorkerInfo& worker,
                                                           absl::Duration wait) {
  const absl::Time deadline = absl::Now() + wait;
  while (true) {
    int64_t generation;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return std::optional<LeasedJob>();
      generation = queue_generation_;
    }
    FT_ASSIGN_OR_RETURN(std::optional<LeasedJob> leased, store_->LeaseNext(worker, options_.lease_ttl));
    SeenWorker(worker.worker_id());
    if (leased.has_value()) {
      if (observer_ && leased->lease.attempt() == 1) {
        if (auto job = store_->GetJob(leased->lease.job_id()); job.ok()) {
          observer_->OnLeased(absl::FromUnixSeconds(job->start_time().seconds()) -
                              absl::FromUnixSeconds(job->create_time().seconds()) +
                              absl::Nanoseconds(job->start_time().nanos() - job->create_time().nanos()));
        }
      }
      util::Log("info", "finetuned", "job leased",
                {{"job_id", leased->lease.job_id()}, {"worker_id", worker.worker_id()},
                 {"attempt", absl::StrCat(leased->lease.attempt())}});
      hub_->Notify(leased->lease.job_id());
      return leased;
    }
    absl::MutexLock lock(&mu_);
    auto changed = [this, generation]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return queue_generation_ != generation;
    };
    if (!mu_.AwaitWithDeadline(absl::Condition(&changed), deadline)) {
      return std::optional<LeasedJob>();
    }
  }
}

absl::StatusOr<pb::Job> JobManager::Heartbeat(const std::string& job_id,
                                              const std::string& lease_id) {
  FT_ASSIGN_OR_RETURN(pb::Job job, store_->RenewLease(job_id, lease_id, options_.lease_ttl));
  SeenWorker(job.worker_id());
  return job;
}

void JobManager::SeenWorker(const std::string& worker_id) {
  absl::MutexLock lock(&mu_);
  workers_seen_[worker_id] = absl::Now();
}

JobManager::WorkerCounts JobManager::Workers() {
  WorkerCounts counts;
  int seen = 0;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time cutoff = absl::Now() - absl::Seconds(30);
    for (auto it = workers_seen_.begin(); it != workers_seen_.end();) {
      if (it->second < cutoff) {
        it = workers_seen_.erase(it);
      } else {
        ++seen;
        ++it;
      }
    }
  }
  auto running = store_->CountInState(pb::RUNNING);
  counts.busy = std::min(seen, running.ok() ? *running : 0);
  counts.idle = seen - counts.busy;
  return counts;
}

void JobManager::ReportFinished(const pb::Job& job) {
  util::Log(job.state() == pb::FAILED ? "warning" : "info", "finetuned", "job finished",
            {{"job_id", job.id()}, {"state", pb::JobState_Name(job.state())}, {"model_id", job.model_id()},
             {"error", job.error()}});
  if (!observer_) return;
  auto to_time = [](const google::protobuf::Timestamp& t) {
    return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
  };
  const absl::Duration duration =
      job.start_time().seconds() > 0 ? to_time(job.end_time()) - to_time(job.start_time()) : absl::ZeroDuration();
  observer_->OnFinished(job.state(), duration, job.metrics().trained_images());
}

absl::Status JobManager::RecordEvent(const std::string& job_id, const std::string& lease_id,
                                     pb::JobEvent event) {
  FT_RETURN_IF_ERROR(store_->AppendEvent(job_id, lease_id, std::move(event)).status());
  hub_->Notify(job_id);
  return absl::OkStatus();
}

absl::StatusOr<pb::Job> JobManager::Finish(const std::string& job_id, const std::string& lease_id,
                                           const pb::JobResult& result) {
  if (result.state() == pb::SUCCEEDED) {
    FT_RETURN_IF_ERROR(models_->Get(result.model_id()).status());
  }
  FT_ASSIGN_OR_RETURN(pb::Job job, store_->FinishJob(job_id, lease_id, result));
  ReportFinished(job);
  hub_->Notify(job_id);
  return job;
}

void JobManager::ReleaseLease(const std::string& job_id, const std::string& lease_id) {
  if (store_->ReleaseLease(job_id, lease_id).ok()) Sweep();
}

absl::Status JobManager::CheckLease(const std::string& job_id, const std::string& lease_id) {
  return store_->CheckLease(job_id, lease_id);
}

void JobManager::Sweep() {
  auto expired = store_->ExpireLeases(options_.max_attempts);
  if (!expired.ok()) return;
  bool requeued = false;
  for (const auto& e : *expired) {
    util::Log("warning", "finetuned", "lease expired",
              {{"job_id", e.job_id}, {"now", pb::JobState_Name(e.new_state)}});
    if (observer_) {
      observer_->OnLeaseExpired();
      if (IsTerminal(e.new_state)) {
        if (auto job = store_->GetJob(e.job_id); job.ok()) ReportFinished(*job);
      }
    }
    hub_->Notify(e.job_id);
    requeued |= e.new_state == pb::QUEUED;
  }
  if (requeued) WakeLeasers();
}

void JobManager::SweepLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), options_.sweep_interval)) return;
    }
    Sweep();
  }
}

}  // namespace ft::server
