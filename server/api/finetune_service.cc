#include "server/api/finetune_service.h"

#include <algorithm>
#include <deque>
#include <iterator>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status/grpc_status.h"
#include "common/util/status.h"
#include "common/util/tenant.h"
#include "server/api/model_files.h"

namespace ft::server {
namespace {

constexpr int kEventBatch = 128;
constexpr int kMaxPredictImages = 64;
constexpr size_t kMaxPredictBytes = 32 << 20;
constexpr absl::Duration kValidateTimeout = absl::Minutes(10);
constexpr absl::Duration kPredictTimeout = absl::Minutes(2);

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const absl::Status& status) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

absl::Status ShuttingDown() { return absl::UnavailableError("the server is shutting down"); }

// Streams a job's persisted events from a sequence number, then live ones,
// and finishes after the terminal event. One write in flight, as in gRPC's
// route_guide callback example. The event log is read on the watch
// executor, never under a lock and never on the thread that notified: a
// hub notification only marks that there is news and schedules a read. The
// log is the single source of truth, so there are no gaps or duplicates.
//
// Lifetime: gRPC calls OnDone once; a read may still be running then, and
// whichever of the two comes last deletes the reactor.
class WatchReactor final : public grpc::ServerWriteReactor<pb::JobEvent> {
 public:
  WatchReactor(JobManager* manager, util::Executor* executor, EventLogCache* cache, std::string job_id,
               int64_t from_sequence)
      : manager_(manager),
        executor_(executor),
        cache_(cache),
        job_id_(std::move(job_id)),
        next_sequence_(std::max<int64_t>(1, from_sequence)) {
    subscription_ = manager_->hub()->Subscribe(job_id_, [this] { Wake(); });
    Wake();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
    } else if (cancelled_) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
    } else if (!pending_.empty()) {
      WriteNextLocked();
    } else {
      ScheduleReadLocked();
    }
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    if (!writing_) FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
  }

  void OnDone() override {
    // First, and without mu_: a notification in progress holds the hub's
    // lock and may be waiting for mu_ in Wake().
    subscription_.reset();
    bool last;
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
      last = !reading_;
    }
    if (last) delete this;
  }

 private:
  // On the notifying thread: cheap, no reads.
  void Wake() {
    cache_->Invalidate(job_id_);
    absl::MutexLock lock(&mu_);
    news_ = true;
    ScheduleReadLocked();
  }

  void ScheduleReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // A write in flight reads again when it completes; a read in flight
    // sees news_ when it ends.
    if (reading_ || writing_ || finished_) return;
    reading_ = true;
    news_ = false;
    const int64_t from = next_sequence_;
    if (!executor_->TrySchedule([this, from] { Read(from); })) {
      reading_ = false;
      FinishLocked(ToGrpcStatus(ShuttingDown()));
    }
  }

  // On the watch executor.
  void Read(int64_t from) {
    auto slice = cache_->Read(job_id_, from, kEventBatch);
    mu_.Lock();
    reading_ = false;
    if (done_) {
      mu_.Unlock();
      delete this;
      return;
    }
    ReadDoneLocked(slice);
    mu_.Unlock();
  }

  void ReadDoneLocked(absl::StatusOr<EventLogCache::Slice>& slice) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    if (cancelled_) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
      return;
    }
    if (!slice.ok()) {
      FinishLocked(ToGrpcStatus(slice.status()));
      return;
    }
    if (!slice->events.empty()) {
      pending_.assign(std::make_move_iterator(slice->events.begin()), std::make_move_iterator(slice->events.end()));
      WriteNextLocked();
      return;
    }
    if (slice->terminal && next_sequence_ > slice->last_sequence) {
      FinishLocked(grpc::Status::OK);
    } else if (news_) {
      ScheduleReadLocked();
    }
  }

  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    current_ = std::move(pending_.front());
    pending_.pop_front();
    next_sequence_ = current_.sequence() + 1;
    writing_ = true;
    StartWrite(&current_);
  }

  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  JobManager* const manager_;
  util::Executor* const executor_;
  EventLogCache* const cache_;
  const std::string job_id_;
  std::unique_ptr<EventHub::Subscription> subscription_;
  absl::Mutex mu_;
  int64_t next_sequence_ ABSL_GUARDED_BY(mu_);
  std::deque<pb::JobEvent> pending_ ABSL_GUARDED_BY(mu_);
  pb::JobEvent current_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool news_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

// Streams a model's files in chunks, one write in flight.
class DownloadReactor final : public grpc::ServerWriteReactor<pb::ModelChunk> {
 public:
  explicit DownloadReactor(std::unique_ptr<ModelFileReader> reader) : reader_(std::move(reader)) {
    Next();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    Next();
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    auto more = reader_->Next(&chunk_);
    if (!more.ok()) {
      Finish(ToGrpcStatus(more.status()));
    } else if (!*more) {
      Finish(grpc::Status::OK);
    } else {
      StartWrite(&chunk_);
    }
  }
  std::unique_ptr<ModelFileReader> reader_;
  pb::ModelChunk chunk_;
};

template <typename T>
class ErrorWriter final : public grpc::ServerWriteReactor<T> {
 public:
  explicit ErrorWriter(const absl::Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

FineTuneService::FineTuneService(const FineTuneServiceOptions& options)
    : options_(options), manager_(options.manager) {}

grpc::ServerUnaryReactor* FineTuneService::Defer(grpc::CallbackServerContext* ctx, util::Executor* executor,
                                                 std::function<absl::Status()> work,
                                                 std::function<absl::Status()> refused) {
  auto* reactor = ctx->DefaultReactor();
  // The request and response live until Finish, so `work` may use them.
  if (!executor->TrySchedule([reactor, work = std::move(work)] { reactor->Finish(ToGrpcStatus(work())); })) {
    reactor->Finish(ToGrpcStatus(refused()));
  }
  return reactor;
}

absl::Status FineTuneService::Admit(const grpc::ServerContextBase* ctx) const {
  if (options_.guard == nullptr) return absl::PermissionDeniedError("the server has no call guard");
  return options_.guard->Check(ctx);
}

bool Sees(const Caller& caller, const std::string& tenant) {
  return caller.admin || caller.tenant == util::TenantOrDefault(tenant);
}

absl::StatusOr<std::string> ListedTenant(const Caller& caller, const std::string& requested) {
  if (caller.admin) return requested;
  if (requested.empty() || requested == caller.tenant) return caller.tenant;
  return absl::PermissionDeniedError(
      absl::StrCat("tenant: only an admin may list another tenant's objects; you are in tenant ", caller.tenant));
}

absl::StatusOr<std::string> NamedTenant(const Caller& caller, const std::string& requested) {
  if (requested.empty() || requested == caller.tenant) return caller.tenant;
  if (caller.admin) return requested;
  return absl::PermissionDeniedError(
      absl::StrCat("tenant: only an admin may name another tenant's objects; you are in tenant ", caller.tenant));
}

absl::Status CheckStorageQuota(JobManager* manager, const Caller& caller, int64_t adding) {
  const std::optional<int64_t>& max = caller.submitter.max_storage_bytes;
  if (!max.has_value()) return absl::OkStatus();
  const int64_t used = manager->TenantStorageBytes(caller.tenant);
  if (used + adding <= *max) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat("tenant ", caller.tenant, " stores ", used,
                                                   " bytes of models and datasets and this adds ", adding,
                                                   ", its quota max_storage_bytes is ", *max,
                                                   "; delete models or datasets first"));
}

Caller FineTuneService::CallerOf(const grpc::ServerContextBase* ctx) const {
  Caller caller;
  caller.tenant = util::kDefaultTenant;
  caller.admin = true;
  std::shared_ptr<const auth::Identity> id = options_.guard ? options_.guard->IdentityOf(ctx) : nullptr;
  // Admit() passed, so the guard knows the caller; a missing identity here
  // is a bug, and the narrowest view (no tenant, no admin) is the safe one.
  if (id == nullptr) {
    caller.tenant = "";
    caller.admin = false;
  } else {
    caller.tenant = util::TenantOrDefault(id->tenant);
    caller.admin = id->role == auth::Role::kAdmin;
    caller.submitter.dataset_roots = id->dataset_roots;
    caller.submitter.max_queued_jobs = id->quota.max_queued_jobs;
    caller.submitter.max_storage_bytes = id->quota.max_storage_bytes;
  }
  caller.submitter.tenant = caller.tenant;
  return caller;
}

absl::StatusOr<pb::Job> FineTuneService::VisibleJob(const Caller& caller, const std::string& job_id) {
  auto job = manager_->Get(job_id);
  if (job.ok() && !Sees(caller, job->tenant())) return absl::NotFoundError(absl::StrCat("no job with id ", job_id));
  return job;
}

absl::StatusOr<pb::Model> FineTuneService::VisibleModel(const Caller& caller, const std::string& model_id) {
  auto model = manager_->models()->Get(model_id);
  if (model.ok() && !Sees(caller, model->tenant())) {
    return absl::NotFoundError(absl::StrCat("no model with id ", model_id));
  }
  return model;
}

absl::Status FineTuneService::ToolQueueFull() {
  util::Executor* q = options_.tool_queue;
  return absl::ResourceExhaustedError(absl::StrFormat(
      "validate and predict run as tool processes: %d are running and %d waiting, this server's limit "
      "(--max-tool-processes %d, --max-queued-tools %d); retry shortly",
      q->running(), q->queued(), q->options().threads, q->options().max_queued));
}

grpc::ServerUnaryReactor* FineTuneService::SubmitJob(grpc::CallbackServerContext* ctx,
                                                     const pb::SubmitJobRequest* request, pb::Job* response) {
  if (absl::Status s = Admit(ctx); !s.ok()) return Done(ctx, s);
  return Defer(
      ctx, options_.slow,
      [this, request, response, caller = CallerOf(ctx)] {
        auto job = manager_->Submit(request->spec(), request->request_id(), caller.submitter);
        if (job.ok()) *response = *std::move(job);
        return job.status();
      },
      ShuttingDown);
}

grpc::ServerUnaryReactor* FineTuneService::GetJob(grpc::CallbackServerContext* ctx,
                                                  const pb::GetJobRequest* request, pb::Job* response) {
  if (absl::Status s = Admit(ctx); !s.ok()) return Done(ctx, s);
  auto job = VisibleJob(CallerOf(ctx), request->job_id());
  if (job.ok()) *response = *std::move(job);
  return Done(ctx, job.status());
}

grpc::ServerUnaryReactor* FineTuneService::ListJobs(grpc::CallbackServerContext* ctx,
                                                    const pb::ListJobsRequest* request,
                                                    pb::ListJobsResponse* response) {
  if (absl::Status s = Admit(ctx); !s.ok()) return Done(ctx, s);
  std::vector<pb::JobState> states;
  for (int s : request->states()) states.push_back(static_cast<pb::JobState>(s));
  auto tenant = ListedTenant(CallerOf(ctx), request->tenant());
  if (!tenant.ok()) return Done(ctx, tenant.status());
  auto jobs = manager_->List(states, request->limit(), *tenant);
  if (jobs.ok()) {
    for (auto& j : *jobs) *response->add_jobs() = std::move(j);
  }
  return Done(ctx, jobs.status());
}

grpc::ServerUnaryReactor* FineTuneService::CancelJob(grpc::CallbackServerContext* ctx,
                                                     const pb::CancelJobRequest* request, pb::Job* response) {
  if (absl::Status s = Admit(ctx); !s.ok()) return Done(ctx, s);
  if (auto visible = VisibleJob(CallerOf(ctx), request->job_id()); !visible.ok()) {
    return Done(ctx, visible.status());
  }
  auto job = manager_->Cancel(request->job_id());
  if (job.ok()) *response = *std::move(job);
  return Done(ctx, job.status());
}

grpc::ServerWriteReactor<pb::JobEvent>* FineTuneService::WatchJob(grpc::CallbackServerContext* ctx,
                                                                  const pb::WatchJobRequest* request) {
  if (absl::Status s = Admit(ctx); !s.ok()) return new ErrorWriter<pb::JobEvent>(s);
  auto job = VisibleJob(CallerOf(ctx), request->job_id());
  if (!job.ok()) return new ErrorWriter<pb::JobEvent>(job.status());
  if (request->from_sequence() < 0) {
    return new ErrorWriter<pb::JobEvent>(absl::InvalidArgumentError("from_sequence: must be non-negative"));
  }
  return new WatchReactor(manager_, options_.watch, options_.events, request->job_id(), request->from_sequence());
}

grpc::ServerUnaryReactor* FineTuneService::ListModels(grpc::CallbackServerContext* ctx,
                                                      const pb::ListModelsRequest* request,
                                                      pb::ListModelsResponse* response) {
  if (absl::Status s = Admit(ctx); !s.ok()) return Done(ctx, s);
  auto tenant = ListedTenant(CallerOf(ctx), request->tenant());
  if (!tenant.ok()) return Done(ctx, tenant.status());
  auto models = manager_->models()->List(*tenant);
  if (models.ok()) {
    for (auto& m : *models) *response->add_models() = std::move(m);
  }
  return Done(ctx, models.status());
}

grpc::ServerUnaryReactor* FineTuneService::GetModel(grpc::CallbackServerContext* ctx,
                                                    const pb::GetModelRequest* request, pb::Model* response) {
  if (absl::Status s = Admit(ctx); !s.ok()) return Done(ctx, s);
  auto model = VisibleModel(CallerOf(ctx), request->model_id());
  if (model.ok()) *response = *std::move(model);
  return Done(ctx, model.status());
}

grpc::ServerUnaryReactor* FineTuneService::DeleteModel(grpc::CallbackServerContext* ctx,
                                                       const pb::DeleteModelRequest* request,
                                                       pb::DeleteModelResponse* response) {
  if (absl::Status s = Admit(ctx); !s.ok()) return Done(ctx, s);
  if (auto visible = VisibleModel(CallerOf(ctx), request->model_id()); !visible.ok()) {
    return Done(ctx, visible.status());
  }
  return Defer(
      ctx, options_.slow, [this, request] { return manager_->models()->Delete(request->model_id()); },
      ShuttingDown);
}

grpc::ServerWriteReactor<pb::ModelChunk>* FineTuneService::DownloadModel(grpc::CallbackServerContext* ctx,
                                                                         const pb::DownloadModelRequest* request) {
  if (absl::Status s = Admit(ctx); !s.ok()) return new ErrorWriter<pb::ModelChunk>(s);
  if (auto visible = VisibleModel(CallerOf(ctx), request->model_id()); !visible.ok()) {
    return new ErrorWriter<pb::ModelChunk>(visible.status());
  }
  auto reader = ModelFileReader::OpenAll(manager_->models(), request->model_id());
  if (!reader.ok()) return new ErrorWriter<pb::ModelChunk>(reader.status());
  return new DownloadReactor(*std::move(reader));
}

absl::StatusOr<pb::ValidationReport> FineTuneService::RunValidation(pb::ResolvedJob resolved) {
  pb::ToolRequest tool_request;
  *tool_request.mutable_validate() = std::move(resolved);
  FT_ASSIGN_OR_RETURN(pb::ToolReply reply, options_.tools->Run(tool_request, kValidateTimeout));
  pb::ValidationReport report = std::move(*reply.mutable_validation());
  FT_ASSIGN_OR_RETURN(int queued, manager_->store()->CountInState(pb::QUEUED));
  report.set_queue_position(queued + 1);
  // A multi-worker job starts only when that many workers are free at once.
  const int needed = std::max(1, report.spec().workers());
  FT_ASSIGN_OR_RETURN(int idle, manager_->store()->CountWaiting());
  report.set_workers_needed(needed);
  report.set_workers_idle(idle);
  if (needed > 1 && idle < needed) {
    report.add_warnings(absl::StrCat("the job needs ", needed, " workers at once and ", idle,
                                     " are idle now (workers that can join a group: --c10d-host): it waits in the "
                                     "queue until ", needed, " are free, while smaller jobs behind it run"));
  }
  return report;
}

grpc::ServerUnaryReactor* FineTuneService::ValidateJob(grpc::CallbackServerContext* ctx,
                                                       const pb::SubmitJobRequest* request,
                                                       pb::ValidationReport* response) {
  if (absl::Status s = Admit(ctx); !s.ok()) return Done(ctx, s);
  auto* reactor = ctx->DefaultReactor();
  // Pre-flight (a dataset scan) on the slow executor, then the dry run in
  // a tool process through the bounded tool queue.
  const bool scheduled = options_.slow->TrySchedule([this, reactor, request, response, caller = CallerOf(ctx)] {
    auto resolved = manager_->Resolve(request->spec(), caller.submitter);
    if (!resolved.ok()) {
      reactor->Finish(ToGrpcStatus(resolved.status()));
      return;
    }
    if (options_.tools == nullptr) {
      reactor->Finish(ToGrpcStatus(absl::UnimplementedError("ValidateJob needs a finetune-worker tool binary")));
      return;
    }
    auto run = [this, reactor, response, resolved = *std::move(resolved)]() mutable {
      auto report = RunValidation(std::move(resolved));
      if (report.ok()) *response = *std::move(report);
      reactor->Finish(ToGrpcStatus(report.status()));
    };
    if (!options_.tool_queue->TrySchedule(std::move(run))) reactor->Finish(ToGrpcStatus(ToolQueueFull()));
  });
  if (!scheduled) reactor->Finish(ToGrpcStatus(ShuttingDown()));
  return reactor;
}

absl::Status FineTuneService::CheckPredict(const Caller& caller, const pb::PredictRequest& request,
                                          std::string* model_dir) {
  if (request.images_size() == 0) return absl::InvalidArgumentError("images: at least one image is required");
  if (request.images_size() > kMaxPredictImages) {
    return absl::InvalidArgumentError(absl::StrCat("images: at most ", kMaxPredictImages, " per request"));
  }
  size_t total = 0;
  for (const auto& img : request.images()) total += img.size();
  if (total > kMaxPredictBytes) {
    return absl::ResourceExhaustedError(absl::StrCat("images: more than ", kMaxPredictBytes, " bytes"));
  }
  if (request.top_k() < 0) return absl::InvalidArgumentError("top_k: must be positive");
  FT_RETURN_IF_ERROR(VisibleModel(caller, request.model_id()).status());
  FT_ASSIGN_OR_RETURN(std::string model_path, manager_->models()->FilePath(request.model_id(), "model.pt"));
  if (options_.tools == nullptr) return absl::UnimplementedError("Predict needs a finetune-worker tool binary");
  *model_dir = std::filesystem::path(model_path).parent_path().string();
  return absl::OkStatus();
}

absl::StatusOr<pb::PredictResponse> FineTuneService::RunPredict(const pb::PredictRequest& request,
                                                                const std::string& model_dir) {
  namespace fs = std::filesystem;
  std::random_device rd;
  const fs::path dir = fs::temp_directory_path() / absl::StrFormat("finetuned-predict-%08x%08x", rd(), rd());
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir.string()));
  pb::ToolRequest tool_request;
  pb::PredictToolRequest* predict = tool_request.mutable_predict();
  predict->set_model_dir(model_dir);
  predict->set_top_k(request.top_k() > 0 ? request.top_k() : 5);
  for (int i = 0; i < request.images_size(); ++i) {
    const fs::path p = dir / absl::StrCat("image-", i);
    std::ofstream(p, std::ios::binary)
        .write(request.images(i).data(), static_cast<std::streamsize>(request.images(i).size()));
    predict->add_image_paths(p.string());
  }
  auto reply = options_.tools->Run(tool_request, kPredictTimeout);
  fs::remove_all(dir, ec);
  FT_RETURN_IF_ERROR(reply.status());
  pb::PredictResponse response = std::move(*reply->mutable_prediction());
  response.set_model_id(request.model_id());
  return response;
}

grpc::ServerUnaryReactor* FineTuneService::Predict(grpc::CallbackServerContext* ctx,
                                                   const pb::PredictRequest* request,
                                                   pb::PredictResponse* response) {
  if (absl::Status s = Admit(ctx); !s.ok()) return Done(ctx, s);
  std::string model_dir;
  if (absl::Status s = CheckPredict(CallerOf(ctx), *request, &model_dir); !s.ok()) return Done(ctx, s);
  return Defer(
      ctx, options_.tool_queue,
      [this, request, response, model_dir] {
        auto r = RunPredict(*request, model_dir);
        if (r.ok()) *response = *std::move(r);
        return r.status();
      },
      [this] { return ToolQueueFull(); });
}

}  // namespace ft::server
