#include "server/api/finetune_service.h"

#include <algorithm>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "server/api/model_files.h"
#include "common/grpc_status/grpc_status.h"

#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/util/proto_json.h"
#include "common/util/status.h"

namespace ft::server {
namespace {

constexpr int kEventBatch = 128;
constexpr int kMaxPredictImages = 64;
constexpr size_t kMaxPredictBytes = 32 << 20;

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const absl::Status& status) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// Streams a job's persisted events from a sequence number, then live ones,
// and finishes after the terminal event. One write in flight; each write's
// completion, or a hub notification, reads the log from the cursor on. The
// log is the single source of truth, so there are no gaps or duplicates.
class WatchReactor final : public grpc::ServerWriteReactor<pb::JobEvent> {
 public:
  WatchReactor(JobManager* manager, std::string job_id, int64_t from_sequence)
      : manager_(manager), job_id_(std::move(job_id)), next_sequence_(std::max<int64_t>(1, from_sequence)) {
    token_ = manager_->hub()->Subscribe(job_id_, [this] { Wake(); });
    Wake();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    NextLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    if (!writing_) FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
  }

  void OnDone() override {
    manager_->hub()->Unsubscribe(token_);
    delete this;
  }

 private:
  void Wake() {
    absl::MutexLock lock(&mu_);
    NextLocked();
  }

  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  void NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_) return;
    if (cancelled_) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
      return;
    }
    if (pending_.empty()) {
      auto events = manager_->store()->ReadEvents(job_id_, next_sequence_, kEventBatch);
      if (!events.ok()) {
        FinishLocked(ToGrpcStatus(events.status()));
        return;
      }
      pending_.assign(events->begin(), events->end());
      std::reverse(pending_.begin(), pending_.end());
    }
    if (pending_.empty()) {
      // Caught up. Finish if the job is over and its last event was sent.
      auto job = manager_->store()->GetJob(job_id_);
      if (!job.ok()) {
        FinishLocked(ToGrpcStatus(job.status()));
      } else if (IsTerminal(job->state()) && next_sequence_ > job->last_sequence()) {
        FinishLocked(grpc::Status::OK);
      }
      return;
    }
    current_ = std::move(pending_.back());
    pending_.pop_back();
    next_sequence_ = current_.sequence() + 1;
    writing_ = true;
    StartWrite(&current_);
  }

  JobManager* manager_;
  const std::string job_id_;
  int64_t token_ = 0;
  absl::Mutex mu_;
  int64_t next_sequence_ ABSL_GUARDED_BY(mu_);
  std::vector<pb::JobEvent> pending_ ABSL_GUARDED_BY(mu_);  // reversed
  pb::JobEvent current_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
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

grpc::ServerUnaryReactor* FineTuneService::SubmitJob(grpc::CallbackServerContext* ctx,
                                                     const pb::SubmitJobRequest* request,
                                                     pb::Job* response) {
  auto job = manager_->Submit(request->spec(), request->request_id());
  if (job.ok()) *response = *std::move(job);
  return Done(ctx, job.status());
}

grpc::ServerUnaryReactor* FineTuneService::GetJob(grpc::CallbackServerContext* ctx,
                                                  const pb::GetJobRequest* request,
                                                  pb::Job* response) {
  auto job = manager_->Get(request->job_id());
  if (job.ok()) *response = *std::move(job);
  return Done(ctx, job.status());
}

grpc::ServerUnaryReactor* FineTuneService::ListJobs(grpc::CallbackServerContext* ctx,
                                                    const pb::ListJobsRequest* request,
                                                    pb::ListJobsResponse* response) {
  std::vector<pb::JobState> states;
  for (int s : request->states()) states.push_back(static_cast<pb::JobState>(s));
  auto jobs = manager_->List(states, request->limit());
  if (jobs.ok()) {
    for (auto& j : *jobs) *response->add_jobs() = std::move(j);
  }
  return Done(ctx, jobs.status());
}

grpc::ServerUnaryReactor* FineTuneService::CancelJob(grpc::CallbackServerContext* ctx,
                                                     const pb::CancelJobRequest* request,
                                                     pb::Job* response) {
  auto job = manager_->Cancel(request->job_id());
  if (job.ok()) *response = *std::move(job);
  return Done(ctx, job.status());
}

grpc::ServerWriteReactor<pb::JobEvent>* FineTuneService::WatchJob(
    grpc::CallbackServerContext* ctx, const pb::WatchJobRequest* request) {
  auto job = manager_->Get(request->job_id());
  if (!job.ok()) return new ErrorWriter<pb::JobEvent>(job.status());
  if (request->from_sequence() < 0) {
    return new ErrorWriter<pb::JobEvent>(
        absl::InvalidArgumentError("from_sequence: must be non-negative"));
  }
  return new WatchReactor(manager_, request->job_id(), request->from_sequence());
}

grpc::ServerUnaryReactor* FineTuneService::ListModels(grpc::CallbackServerContext* ctx,
                                                      const pb::ListModelsRequest* request,
                                                      pb::ListModelsResponse* response) {
  auto models = manager_->models()->List();
  if (models.ok()) {
    for (auto& m : *models) *response->add_models() = std::move(m);
  }
  return Done(ctx, models.status());
}

grpc::ServerUnaryReactor* FineTuneService::GetModel(grpc::CallbackServerContext* ctx,
                                                    const pb::GetModelRequest* request,
                                                    pb::Model* response) {
  auto model = manager_->models()->Get(request->model_id());
  if (model.ok()) *response = *std::move(model);
  return Done(ctx, model.status());
}

grpc::ServerUnaryReactor* FineTuneService::DeleteModel(grpc::CallbackServerContext* ctx,
                                                       const pb::DeleteModelRequest* request,
                                                       pb::DeleteModelResponse* response) {
  return Done(ctx, manager_->models()->Delete(request->model_id()));
}

grpc::ServerWriteReactor<pb::ModelChunk>* FineTuneService::DownloadModel(
    grpc::CallbackServerContext* ctx, const pb::DownloadModelRequest* request) {
  auto reader = ModelFileReader::Open(manager_->models(), request->model_id(),
                                      {"metadata.json", "model.pt"});
  if (!reader.ok()) return new ErrorWriter<pb::ModelChunk>(reader.status());
  return new DownloadReactor(*std::move(reader));
}

absl::StatusOr<pb::ValidationReport> FineTuneService::Validate(const pb::JobSpec& spec) {
  FT_ASSIGN_OR_RETURN(pb::ResolvedJob resolved, manager_->Resolve(spec));
  if (tool_ == nullptr) return absl::UnimplementedError("ValidateJob needs a local finetune-worker binary");
  pb::ToolRequest tool_request;
  *tool_request.mutable_validate() = std::move(resolved);
  FT_ASSIGN_OR_RETURN(pb::ToolReply reply, tool_->Run(tool_request, absl::Minutes(10)));
  pb::ValidationReport report = std::move(*reply.mutable_validation());
  FT_ASSIGN_OR_RETURN(int queued, manager_->store()->CountInState(pb::QUEUED));
  report.set_queue_position(queued + 1);
  return report;
}

grpc::ServerUnaryReactor* FineTuneService::ValidateJob(grpc::CallbackServerContext* ctx,
                                                       const pb::SubmitJobRequest* request,
                                                       pb::ValidationReport* response) {
  auto report = Validate(request->spec());
  if (report.ok()) *response = *std::move(report);
  return Done(ctx, report.status());
}

absl::StatusOr<pb::PredictResponse> FineTuneService::RunPredict(const pb::PredictRequest& request) {
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
  FT_ASSIGN_OR_RETURN(std::string model_path, manager_->models()->FilePath(request.model_id(), "model.pt"));
  if (tool_ == nullptr) return absl::UnimplementedError("Predict needs a local finetune-worker binary");
  namespace fs = std::filesystem;
  std::random_device rd;
  const fs::path dir = fs::temp_directory_path() / absl::StrFormat("finetuned-predict-%08x%08x", rd(), rd());
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir.string()));
  pb::ToolRequest tool_request;
  pb::PredictToolRequest* predict = tool_request.mutable_predict();
  predict->set_model_dir(fs::path(model_path).parent_path().string());
  predict->set_top_k(request.top_k() > 0 ? request.top_k() : 5);
  for (int i = 0; i < request.images_size(); ++i) {
    const fs::path p = dir / absl::StrCat("image-", i);
    std::ofstream(p, std::ios::binary).write(request.images(i).data(),
                                             static_cast<std::streamsize>(request.images(i).size()));
    predict->add_image_paths(p.string());
  }
  auto reply = tool_->Run(tool_request, absl::Minutes(2));
  fs::remove_all(dir, ec);
  FT_RETURN_IF_ERROR(reply.status());
  pb::PredictResponse response = std::move(*reply->mutable_prediction());
  response.set_model_id(request.model_id());
  return response;
}

grpc::ServerUnaryReactor* FineTuneService::Predict(grpc::CallbackServerContext* ctx,
                                                   const pb::PredictRequest* request,
                                                   pb::PredictResponse* response) {
  auto r = RunPredict(*request);
  if (r.ok()) *response = *std::move(r);
  return Done(ctx, r.status());
}

}  // namespace ft::server
