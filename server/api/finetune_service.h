#ifndef FT_SERVER_API_FINETUNE_SERVICE_H_
#define FT_SERVER_API_FINETUNE_SERVICE_H_

#include "finetune/v1/finetune.grpc.pb.h"
#include "server/jobs/job_manager.h"
#include "server/workers/worker_tool.h"

namespace ft::server {

// The public FineTune API: a thin callback-API layer over JobManager.
class FineTuneService final : public pb::FineTune::CallbackService {
 public:
  // `manager` and `tool` are not owned and must outlive the service; `tool`
  // (for ValidateJob and Predict) may be null, and those calls then fail.
  FineTuneService(JobManager* manager, const WorkerTool* tool) : manager_(manager), tool_(tool) {}

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx,
                                      const pb::SubmitJobRequest* request,
                                      pb::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx,
                                   const pb::GetJobRequest* request, pb::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                     const pb::ListJobsRequest* request,
                                     pb::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx,
                                      const pb::CancelJobRequest* request,
                                      pb::Job* response) override;
  grpc::ServerWriteReactor<pb::JobEvent>* WatchJob(grpc::CallbackServerContext* ctx,
                                                   const pb::WatchJobRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx,
                                       const pb::ListModelsRequest* request,
                                       pb::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx,
                                     const pb::GetModelRequest* request,
                                     pb::Model* response) override;
  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* ctx,
                                        const pb::DeleteModelRequest* request,
                                        pb::DeleteModelResponse* response) override;
  grpc::ServerWriteReactor<pb::ModelChunk>* DownloadModel(
      grpc::CallbackServerContext* ctx, const pb::DownloadModelRequest* request) override;
  grpc::ServerUnaryReactor* ValidateJob(grpc::CallbackServerContext* ctx, const pb::SubmitJobRequest* request,
                                        pb::ValidationReport* response) override;
  grpc::ServerUnaryReactor* Predict(grpc::CallbackServerContext* ctx, const pb::PredictRequest* request,
                                    pb::PredictResponse* response) override;
  // Uploaded datasets, in dataset_rpcs.cc.
  grpc::ServerReadReactor<pb::UploadDatasetRequest>* UploadDataset(grpc::CallbackServerContext* ctx,
                                                                   pb::Dataset* response) override;
  grpc::ServerUnaryReactor* ListDatasets(grpc::CallbackServerContext* ctx, const pb::ListDatasetsRequest* request,
                                         pb::ListDatasetsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteDataset(grpc::CallbackServerContext* ctx, const pb::DeleteDatasetRequest* request,
                                          pb::DeleteDatasetResponse* response) override;

 private:
  absl::StatusOr<pb::ValidationReport> Validate(const pb::JobSpec& spec);
  absl::StatusOr<pb::PredictResponse> RunPredict(const pb::PredictRequest& request);

  JobManager* manager_;
  const WorkerTool* tool_;
};

}  // namespace ft::server

#endif  // FT_SERVER_API_FINETUNE_SERVICE_H_
