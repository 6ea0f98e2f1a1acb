#include "server/jobs/job_manager.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/util/log.h"
#include "common/util/status.h"
#include "common/util/tenant.h"
#include "common/datasets/layout.h"
#include "server/datasets/resolver.h"
#include "server/jobs/spec_validation.h"
#include "common/catalog/catalog.h"

namespace ft::server {
namespace fs = std::filesystem;
namespace {

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
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
    : options_(options),
      clock_(options.clock != nullptr ? options.clock : &real_clock_),
      store_(store),
      hub_(hub),
      models_(models) {}

JobManager::~JobManager() { Shutdown(); }

void JobManager::Start() {
  // Other replicas' changes to the store (PostgreSQL): their events wake
  // this replica's watchers, whose reads then find them in the store, and a
  // job they queued wakes this replica's idle leasers.
  const absl::Status feed = store_->StartChangeFeed(
      [this](const std::string& job_id, bool queued) {
        hub_->Notify(job_id);
        if (queued) WakeLeasers();
      },
      [this] {
        hub_->NotifyAll();
        WakeLeasers();
      });
  if (!feed.ok()) {
    util::Log("warning", "finetuned", "no job change feed", {{"error", std::string(feed.message())}});
  }
  sweeper_ = std::thread([this] { SweepLoop(); });
}

void JobManager::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    ++queue_generation_;
  }
  store_->StopChangeFeed();
  if (sweeper_.joinable()) sweeper_.join();
}

absl::StatusOr<pb::ResolvedJob> JobManager::Resolve(const pb::JobSpec& in, const Submitter& submitter) {
  pb::ResolvedJob resolved;
  const std::string tenant = util::TenantOrDefault(submitter.tenant);
  resolved.set_tenant(tenant);
  // An identity's own roots replace the server's: a tenant's data stays in
  // its folders even where the server's roots are wider.
  const std::vector<std::string>& dataset_roots =
      submitter.dataset_roots.empty() ? options_.dataset_roots : submitter.dataset_roots;
  pb::JobSpec* spec = resolved.mutable_spec();
  *spec = in;
  const catalog::BackboneInfo* backbone = nullptr;
  FT_RETURN_IF_ERROR(ValidateSpec(spec, &backbone));

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
    // Another tenant's model reads exactly like one that does not exist.
    if (model.ok() && model->tenant() != tenant) model = absl::NotFoundError("another tenant's");
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
    std::vector<std::string> roots = dataset_roots;
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
                      datasets::LocateDataset(uri, dataset_roots, options_.dataset_store, tenant));
  const std::string& path = location.path;
  uri.options.val_split = spec->val_split();
  uri.options.seed = static_cast<uint64_t>(spec->seed());
  // An archive's files stay in its extracted folder (the default); a file://
  // dataset's may be anywhere in the roots, as its URI may be.
  if (location.digest.empty()) uri.options.roots = dataset_roots;
  FT_ASSIGN_OR_RETURN(datasets::DatasetLayout layout, datasets::ScanDataset(path, uri.options));
  resolved.set_dataset_path(path);
  resolved.set_dataset_digest(location.digest);
  resolved.set_dataset_format(layout.format);
  for (const auto& c : uri.options.classes) resolved.add_dataset_classes(c);
  resolved.set_max_per_class(uri.options.max_per_class);
  resolved.set_max_val_per_class(uri.options.max_val_per_class);
  resolved.set_val_from_split(uri.options.val_from_split);
  for (const auto& root : uri.options.roots) resolved.add_dataset_roots(root);
  return resolved;
}

int64_t JobManager::TenantStorageBytes(const std::string& tenant) {
  int64_t total = models_->TenantBytes(tenant);
  if (options_.dataset_store != nullptr) total += options_.dataset_store->TenantBytes(tenant);
  return total;
}

absl::StatusOr<pb::Job> JobManager::Submit(const pb::JobSpec& spec, const std::string& request_id,
                                           const Submitter& submitter) {
  if (request_id.size() > 128) return Invalid("request_id", "is longer than 128 characters");
  FT_ASSIGN_OR_RETURN(pb::ResolvedJob resolved, Resolve(spec, submitter));
  const std::string& tenant = resolved.tenant();
  absl::StatusOr<pb::Job> created;
  {
    absl::MutexLock lock(&submit_mu_);
    if (submitter.max_queued_jobs.has_value()) {
      FT_ASSIGN_OR_RETURN(int active, store_->CountActive(tenant));
      if (active >= *submitter.max_queued_jobs) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "tenant ", tenant, " has ", active, " queued or running jobs, its quota max_queued_jobs is ",
            *submitter.max_queued_jobs, "; wait for one to finish or cancel one"));
      }
    }
    if (submitter.max_storage_bytes.has_value()) {
      const int64_t used = TenantStorageBytes(tenant);
      if (used >= *submitter.max_storage_bytes) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "tenant ", tenant, " stores ", used, " bytes of models and datasets, its quota max_storage_bytes is ",
            *submitter.max_storage_bytes, "; delete models or datasets first"));
      }
    }
    created = store_->CreateJob(resolved, request_id);
  }
  FT_ASSIGN_OR_RETURN(pb::Job job, std::move(created));
  if (observer_) observer_->OnSubmitted(job.tenant());
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

absl::StatusOr<std::vector<pb::Job>> JobManager::List(const std::vector<pb::JobState>& states, int limit,
                                                      const std::string& tenant) {
  if (limit <= 0) limit = 100;
  FT_ASSIGN_OR_RETURN(std::vector<pb::Job> jobs, store_->ListJobs(states, std::min(limit, 10000), tenant));
  // A list is a summary: the thumbnails of misclassified images (up to
  // 160 KB a job) come with GetJob only, so that a list of many jobs stays
  // within a client's default message size (4 MB in most gRPC libraries).
  for (pb::Job& job : jobs) {
    for (auto* list : {job.mutable_metrics()->mutable_test_misclassified(),
                       job.mutable_metrics()->mutable_val_misclassified()}) {
      for (pb::Misclassified& m : *list) m.clear_thumbnail_jpeg();
    }
  }
  return jobs;
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
  const absl::Time deadline = clock_->Now() + wait;
  const auto resume_point = [this](const std::string& job_id) {
    JobStore::ResumePoint point;
    if (options_.checkpoints == nullptr) return point;
    const auto stored = options_.checkpoints->List(job_id);
    if (!stored.empty()) {
      point.epoch = stored.back().epoch;
      point.step = stored.back().step;
    }
    return point;
  };
  // A lease for `worker` (its own job, or a rank of another's group).
  const auto leased_to = [&](std::optional<LeasedJob> leased) -> std::optional<LeasedJob> {
    const pb::Lease& lease = leased->lease;
    SeenWorker(worker.worker_id(), /*busy=*/true);
    if (lease.rank() > 0) {
      util::Log("info", "finetuned", "rank taken",
                {{"job_id", lease.job_id()}, {"worker_id", worker.worker_id()},
                 {"rank", absl::StrCat(lease.rank(), "/", lease.gang().world_size())}});
      return leased;
    }
    if (lease.gang().world_size() > 1) {
      // The group's other ranks wait in their own leases here, or on other
      // replicas (the store's change feed wakes those).
      WakeLeasers();
    }
    if (observer_ && lease.attempt() == 1) {
      if (auto job = store_->GetJob(lease.job_id()); job.ok()) {
        observer_->OnLeased(absl::FromUnixSeconds(job->start_time().seconds()) -
                            absl::FromUnixSeconds(job->create_time().seconds()) +
                            absl::Nanoseconds(job->start_time().nanos() - job->create_time().nanos()));
      }
    }
    util::Log("info", "finetuned", "job leased",
              {{"job_id", lease.job_id()}, {"worker_id", worker.worker_id()},
               {"attempt", absl::StrCat(lease.attempt())},
               {"workers", absl::StrCat(std::max(1, lease.gang().world_size()))}});
    hub_->Notify(lease.job_id());
    return leased;
  };
  while (true) {
    int64_t generation;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
      generation = queue_generation_;
    }
    FT_ASSIGN_OR_RETURN(std::optional<LeasedJob> leased,
                        store_->LeaseNext(worker, options_.lease_ttl, resume_point, deadline));
    if (leased.has_value()) return leased_to(std::move(leased));
    SeenWorker(worker.worker_id(), /*busy=*/false);
    const absl::Duration left = deadline - clock_->Now();
    if (left <= absl::ZeroDuration()) break;
    absl::MutexLock lock(&mu_);
    auto changed = [this, generation]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return queue_generation_ != generation;
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&changed), left)) break;
  }
  // No longer waiting: a rank given in the meantime is still this worker's.
  FT_ASSIGN_OR_RETURN(std::optional<LeasedJob> given, store_->StopWaiting(worker, options_.lease_ttl));
  if (given.has_value()) return leased_to(std::move(given));
  return std::optional<LeasedJob>();
}

absl::StatusOr<pb::Job> JobManager::Heartbeat(const std::string& job_id,
                                              const std::string& lease_id) {
  FT_ASSIGN_OR_RETURN(pb::Job job, store_->RenewLease(job_id, lease_id, options_.lease_ttl));
  // Ranks other than 0 send no heartbeats of their own.
  if (job.workers_size() > 1) {
    for (const std::string& rank : job.workers()) SeenWorker(rank, /*busy=*/true);
  } else {
    SeenWorker(job.worker_id(), /*busy=*/true);
  }
  return job;
}

void JobManager::SeenWorker(const std::string& worker_id, bool busy) {
  absl::MutexLock lock(&mu_);
  workers_seen_[worker_id] = {clock_->Now(), busy};
}

JobManager::WorkerCounts JobManager::Workers() {
  WorkerCounts counts;
  absl::MutexLock lock(&mu_);
  const absl::Time cutoff = clock_->Now() - absl::Seconds(30);
  for (auto it = workers_seen_.begin(); it != workers_seen_.end();) {
    if (it->second.when < cutoff) {
      it = workers_seen_.erase(it);
    } else {
      ++(it->second.busy ? counts.busy : counts.idle);
      ++it;
    }
  }
  return counts;
}

void JobManager::ReportFinished(const pb::Job& job) {
  if (options_.checkpoints != nullptr && IsTerminal(job.state())) options_.checkpoints->DeleteJob(job.id());
  util::Log(job.state() == pb::FAILED ? "warning" : "info", "finetuned", "job finished",
            {{"job_id", job.id()}, {"state", pb::JobState_Name(job.state())}, {"model_id", job.model_id()},
             {"error", job.error()}});
  if (!observer_) return;
  auto to_time = [](const google::protobuf::Timestamp& t) {
    return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
  };
  const absl::Duration duration =
      job.start_time().seconds() > 0 ? to_time(job.end_time()) - to_time(job.start_time()) : absl::ZeroDuration();
  observer_->OnFinished(job.state(), duration, job.metrics().trained_images(), util::TenantOrDefault(job.tenant()));
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

absl::StatusOr<pb::Job> JobManager::ReturnJob(const std::string& job_id, const std::string& lease_id,
                                              const std::string& reason) {
  FT_ASSIGN_OR_RETURN(pb::Job job, store_->ReturnJob(job_id, lease_id, reason));
  util::Log("info", "finetuned", "job returned", {{"job_id", job_id}, {"reason", reason},
                                                   {"state", pb::JobState_Name(job.state())}});
  if (IsTerminal(job.state())) ReportFinished(job);
  hub_->Notify(job_id);
  WakeLeasers();
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
    if (observer_) observer_->OnLeaseExpired();
    if (IsTerminal(e.new_state)) {
      if (auto job = store_->GetJob(e.job_id); job.ok()) ReportFinished(*job);
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
