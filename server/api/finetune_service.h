#ifndef FT_SERVER_API_FINETUNE_SERVICE_H_
#define FT_SERVER_API_FINETUNE_SERVICE_H_

#include <functional>

#include "common/util/executor.h"
#include "finetune/v1/finetune.grpc.pb.h"
#include "server/auth/call_guard.h"
#include "server/jobs/event_log_cache.h"
#include "server/jobs/job_manager.h"
#include "server/workers/tool_runner.h"

namespace ft::server {

// Who makes a call, as the tenant checks see it.
struct Caller {
  std::string tenant;
  // Admins see and act on every tenant's jobs and models, and list every
  // tenant unless they ask for one.
  bool admin = false;
  Submitter submitter;
};

// An object of `tenant` exists for the caller only when it is theirs or the
// caller is an admin; otherwise the handlers answer with the same NOT_FOUND
// as for an id that does not exist, so that nothing leaks.
bool Sees(const Caller& caller, const std::string& tenant);
// The tenant a List* call shows: the caller's own, or for an admin the one
// asked for (empty: every tenant). PERMISSION_DENIED when a non-admin asks
// for another tenant.
absl::StatusOr<std::string> ListedTenant(const Caller& caller, const std::string& requested);
// The tenant a per-tenant name (a dataset's) is looked up in: the caller's
// own when `requested` is empty; another only for an admin, else
// PERMISSION_DENIED.
absl::StatusOr<std::string> NamedTenant(const Caller& caller, const std::string& requested);
// RESOURCE_EXHAUSTED when `adding` more bytes would take the caller's tenant
// past its max_storage_bytes.
absl::Status CheckStorageQuota(JobManager* manager, const Caller& caller, int64_t adding);

struct FineTuneServiceOptions {
  // None owned; all must outlive the service.
  JobManager* manager = nullptr;
  // ValidateJob's dry run and Predict; null refuses both (UNIMPLEMENTED).
  ToolRunner* tools = nullptr;
  // Work too slow for a gRPC callback thread: SubmitJob (dataset scans and
  // archive extraction), upload commits, dataset deletes, ValidateJob's
  // pre-flight. Unbounded queue: such calls wait their turn, never refused.
  util::Executor* slow = nullptr;
  // Tool runs. Bounded: a run that finds it full is RESOURCE_EXHAUSTED
  // with the numbers, never a hang.
  util::Executor* tool_queue = nullptr;
  // WatchJob's reads of the event log, woken by the event hub, through the
  // cache that serves all watchers of a job with one store read.
  util::Executor* watch = nullptr;
  EventLogCache* events = nullptr;
  // Who may call what (server/auth). Required: without it every call is
  // refused, never silently allowed.
  const auth::CallGuard* guard = nullptr;
};

// The public FineTune API: a thin callback-API layer over JobManager. Every
// handler either answers at once (reads of the store) or hands its work to
// one of the executors and Finishes from there, so no gRPC callback thread
// ever waits on a dataset scan, an extraction or a child process. Each
// handler first asks the call guard whether the caller may make the call.
class FineTuneService final : public pb::FineTune::CallbackService {
 public:
  explicit FineTuneService(const FineTuneServiceOptions& options);

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx, const pb::SubmitJobRequest* request,
                                      pb::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx, const pb::GetJobRequest* request,
                                   pb::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx, const pb::ListJobsRequest* request,
                                     pb::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx, const pb::CancelJobRequest* request,
                                      pb::Job* response) override;
  grpc::ServerWriteReactor<pb::JobEvent>* WatchJob(grpc::CallbackServerContext* ctx,
                                                   const pb::WatchJobRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx, const pb::ListModelsRequest* request,
                                       pb::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx, const pb::GetModelRequest* request,
                                     pb::Model* response) override;
  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* ctx, const pb::DeleteModelRequest* request,
                                        pb::DeleteModelResponse* response) override;
  grpc::ServerWriteReactor<pb::ModelChunk>* DownloadModel(grpc::CallbackServerContext* ctx,
                                                          const pb::DownloadModelRequest* request) override;
  grpc::ServerUnaryReactor* ValidateJob(grpc::CallbackServerContext* ctx, const pb::SubmitJobRequest* request,
                                        pb::ValidationReport* response) override;
  grpc::ServerUnaryReactor* Predict(grpc::CallbackServerContext* ctx, const pb::PredictRequest* request,
                                    pb::PredictResponse* response) override;
  // Uploaded datasets, in dataset_rpcs.cc.
  grpc::ServerReadReactor<pb::UploadDatasetRequest>* UploadDataset(grpc::CallbackServerContext* ctx,
                                                                   pb::Dataset* response) override;
  grpc::ServerUnaryReactor* GetDataset(grpc::CallbackServerContext* ctx, const pb::GetDatasetRequest* request,
                                       pb::Dataset* response) override;
  grpc::ServerUnaryReactor* ListDatasets(grpc::CallbackServerContext* ctx, const pb::ListDatasetsRequest* request,
                                         pb::ListDatasetsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteDataset(grpc::CallbackServerContext* ctx, const pb::DeleteDatasetRequest* request,
                                          pb::DeleteDatasetResponse* response) override;

 private:
  // Runs `work` on `executor` and finishes `ctx`'s call with its status;
  // when the executor refuses, finishes with `refused()` at once.
  grpc::ServerUnaryReactor* Defer(grpc::CallbackServerContext* ctx, util::Executor* executor,
                                  std::function<absl::Status()> work, std::function<absl::Status()> refused);
  // OK, or the UNAUTHENTICATED / PERMISSION_DENIED the call ends with.
  absl::Status Admit(const grpc::ServerContextBase* ctx) const;
  // The admitted caller's tenant and limits (the default tenant, an admin,
  // without --auth-file).
  Caller CallerOf(const grpc::ServerContextBase* ctx) const;
  // The job or model, or NOT_FOUND worded as for a missing id when the
  // caller may not see it.
  absl::StatusOr<pb::Job> VisibleJob(const Caller& caller, const std::string& job_id);
  absl::StatusOr<pb::Model> VisibleModel(const Caller& caller, const std::string& model_id);
  // RESOURCE_EXHAUSTED with the tool queue's numbers.
  absl::Status ToolQueueFull();
  absl::StatusOr<pb::ValidationReport> RunValidation(pb::ResolvedJob resolved);
  absl::Status CheckPredict(const Caller& caller, const pb::PredictRequest& request, std::string* model_dir);
  absl::StatusOr<pb::PredictResponse> RunPredict(const pb::PredictRequest& request, const std::string& model_dir);

  const FineTuneServiceOptions options_;
  JobManager* const manager_;
};

}  // namespace ft::server

#endif  // FT_SERVER_API_FINETUNE_SERVICE_H_
