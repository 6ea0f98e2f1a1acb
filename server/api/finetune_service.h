#ifndef FT_SERVER_API_FINETUNE_SERVICE_H_
#define FT_SERVER_API_FINETUNE_SERVICE_H_

#include "finetune/v1/finetune.grpc.pb.h"
#include "server/jobs/job_manager.h"

namespace ft::server {

// The public FineTune API: a thin callback-API layer over JobManager.
class FineTuneService final : public pb::FineTune::CallbackService {
 public:
  // `manager` is not owned and must outlive the service.
  explicit FineTuneService(JobManager* manager) : manager_(manager) {}

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

 private:
  JobManager* manager_;
};

}  // namespace ft::server

#endif  // FT_SERVER_API_FINETUNE_SERVICE_H_
