#ifndef FT_SERVER_API_WORKER_GATEWAY_SERVICE_H_
#define FT_SERVER_API_WORKER_GATEWAY_SERVICE_H_

#include "finetune/v1/worker.grpc.pb.h"
#include "server/auth/call_guard.h"
#include "server/jobs/job_manager.h"

namespace ft::server {

// The internal WorkerGateway. Synchronous on purpose: each call belongs to
// one worker (a handful per server), and LeaseJob long-polls.
class WorkerGatewayService final : public pb::WorkerGateway::Service {
 public:
  // Neither is owned; both must outlive the service. `guard` decides who
  // may call (workers and admins); null refuses every call.
  WorkerGatewayService(JobManager* manager, const auth::CallGuard* guard) : manager_(manager), guard_(guard) {}

  grpc::Status LeaseJob(grpc::ServerContext* ctx, const pb::LeaseJobRequest* request,
                        pb::LeaseJobResponse* response) override;
  grpc::Status RunJob(grpc::ServerContext* ctx,
                      grpc::ServerReaderWriter<pb::ServerMessage, pb::WorkerMessage>* stream) override;
  grpc::Status UploadModel(grpc::ServerContext* ctx, grpc::ServerReader<pb::UploadModelChunk>* reader,
                           pb::UploadModelResponse* response) override;
  grpc::Status FetchModel(grpc::ServerContext* ctx, const pb::FetchModelRequest* request,
                          grpc::ServerWriter<pb::ModelChunk>* writer) override;
  grpc::Status UploadCheckpoint(grpc::ServerContext* ctx, grpc::ServerReader<pb::UploadCheckpointChunk>* reader,
                                pb::UploadCheckpointResponse* response) override;
  grpc::Status FetchCheckpoint(grpc::ServerContext* ctx, const pb::FetchCheckpointRequest* request,
                               grpc::ServerWriter<pb::CheckpointChunk>* writer) override;
  // In dataset_rpcs.cc.
  grpc::Status FetchDataset(grpc::ServerContext* ctx, const pb::FetchDatasetRequest* request,
                            grpc::ServerWriter<pb::DatasetChunk>* writer) override;

 private:
  absl::Status Admit(const grpc::ServerContextBase* ctx) const;

  JobManager* manager_;
  const auth::CallGuard* guard_;
};

}  // namespace ft::server

#endif  // FT_SERVER_API_WORKER_GATEWAY_SERVICE_H_
