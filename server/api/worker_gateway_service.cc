#include "server/api/worker_gateway_service.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/transfer/transfer.h"
#include "server/api/model_files.h"
#include "common/grpc_status/grpc_status.h"

namespace ft::server {
namespace {
constexpr int kMaxLeaseWaitSeconds = 30;
}  // namespace

absl::Status WorkerGatewayService::Admit(const grpc::ServerContextBase* ctx) const {
  if (guard_ == nullptr) return absl::PermissionDeniedError("the server has no call guard");
  return guard_->Check(ctx);
}

grpc::Status WorkerGatewayService::LeaseJob(grpc::ServerContext* ctx,
                                            const pb::LeaseJobRequest* request,
                                            pb::LeaseJobResponse* response) {
  if (absl::Status s = Admit(ctx); !s.ok()) return ToGrpcStatus(s);
  if (request->worker().worker_id().empty()) {
    return ToGrpcStatus(absl::InvalidArgumentError("worker.worker_id: is required"));
  }
  const int wait = std::clamp(request->wait_seconds(), 0, kMaxLeaseWaitSeconds);
  auto leased = manager_->Lease(request->worker(), absl::Seconds(wait));
  if (!leased.ok()) return ToGrpcStatus(leased.status());
  if (leased->has_value()) {
    response->set_leased(true);
    *response->mutable_lease() = (*leased)->lease;
    *response->mutable_job() = (*leased)->job;
  }
  return grpc::Status::OK;
}

grpc::Status WorkerGatewayService::RunJob(
    grpc::ServerContext* ctx, grpc::ServerReaderWriter<pb::ServerMessage, pb::WorkerMessage>* stream) {
  if (absl::Status s = Admit(ctx); !s.ok()) return ToGrpcStatus(s);
  pb::WorkerMessage msg;
  if (!stream->Read(&msg) || !msg.has_hello()) {
    return ToGrpcStatus(absl::InvalidArgumentError("RunJob must start with hello"));
  }
  const std::string job_id = msg.hello().job_id();
  const std::string lease_id = msg.hello().lease_id();
  if (auto s = manager_->CheckLease(job_id, lease_id); !s.ok()) {
    pb::ServerMessage lost;
    lost.set_lease_lost(true);
    stream->Write(lost);
    return ToGrpcStatus(s);
  }
  bool cancel_sent = false;
  auto lose_lease = [&](const absl::Status& s) {
    pb::ServerMessage lost;
    lost.set_lease_lost(true);
    stream->Write(lost);
    return ToGrpcStatus(s);
  };
  while (stream->Read(&msg)) {
    if (msg.has_heartbeat()) {
      auto job = manager_->Heartbeat(job_id, lease_id);
      if (!job.ok()) return lose_lease(job.status());
      if (job->cancel_requested() && !cancel_sent) {
        pb::ServerMessage cancel;
        cancel.mutable_cancel()->set_reason("cancelled by user");
        stream->Write(cancel);
        cancel_sent = true;
      }
    } else if (msg.has_event()) {
      auto s = manager_->RecordEvent(job_id, lease_id, msg.event());
      if (absl::IsFailedPrecondition(s) || absl::IsNotFound(s)) return lose_lease(s);
      if (!s.ok()) return ToGrpcStatus(s);
    } else if (msg.has_result()) {
      pb::JobResult result = msg.result();
      // A worker that stopped because it was asked to reports CANCELLED.
      auto job = manager_->Finish(job_id, lease_id, result);
      return ToGrpcStatus(job.status());
    } else if (msg.has_release()) {
      auto job = manager_->ReturnJob(job_id, lease_id, msg.release().reason());
      return ToGrpcStatus(job.status());
    }
  }
  // The stream broke without a result: the worker is gone.
  manager_->ReleaseLease(job_id, lease_id);
  return grpc::Status(grpc::StatusCode::CANCELLED, "worker stream ended without a result");
}

grpc::Status WorkerGatewayService::UploadModel(grpc::ServerContext* ctx,
                                               grpc::ServerReader<pb::UploadModelChunk>* reader,
                                               pb::UploadModelResponse* response) {
  if (absl::Status s = Admit(ctx); !s.ok()) return ToGrpcStatus(s);
  pb::UploadModelChunk chunk;
  if (!reader->Read(&chunk) || !chunk.has_header()) {
    return ToGrpcStatus(absl::InvalidArgumentError("UploadModel must start with a header"));
  }
  const pb::UploadModelHeader header = chunk.header();
  if (auto s = manager_->CheckLease(header.job_id(), header.lease_id()); !s.ok()) {
    return ToGrpcStatus(s);
  }
  auto upload = manager_->models()->BeginUpload();
  if (!upload.ok()) return ToGrpcStatus(upload.status());
  // The bytes after the header are model.pt's; each `file` starts another.
  if (auto s = (*upload)->StartFile("model.pt", header.size_bytes(), header.sha256()); !s.ok()) {
    return ToGrpcStatus(s);
  }
  while (reader->Read(&chunk)) {
    absl::Status s;
    if (chunk.has_data()) {
      s = (*upload)->Append(chunk.data());
    } else if (chunk.has_file()) {
      s = (*upload)->StartFile(chunk.file().name(), chunk.file().size_bytes(), chunk.file().sha256());
    } else {
      s = absl::InvalidArgumentError("UploadModel: a second header");
    }
    if (!s.ok()) return ToGrpcStatus(s);
  }
  auto job = manager_->Get(header.job_id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  auto model = manager_->models()->Commit(*std::move(upload), header.job_id(), job->spec().name(),
                                          header.metadata_json(), job->tenant());
  if (!model.ok()) return ToGrpcStatus(model.status());
  response->set_model_id(model->id());
  return grpc::Status::OK;
}

grpc::Status WorkerGatewayService::FetchModel(grpc::ServerContext* ctx,
                                              const pb::FetchModelRequest* request,
                                              grpc::ServerWriter<pb::ModelChunk>* writer) {
  if (absl::Status s = Admit(ctx); !s.ok()) return ToGrpcStatus(s);
  auto reader = ModelFileReader::Open(manager_->models(), request->model_id(), {"model.pt"});
  if (!reader.ok()) return ToGrpcStatus(reader.status());
  pb::ModelChunk chunk;
  while (true) {
    auto more = (*reader)->Next(&chunk);
    if (!more.ok()) return ToGrpcStatus(more.status());
    if (!*more) return grpc::Status::OK;
    if (!writer->Write(chunk)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "worker went away");
    }
  }
}

grpc::Status WorkerGatewayService::UploadCheckpoint(grpc::ServerContext* ctx,
                                                    grpc::ServerReader<pb::UploadCheckpointChunk>* reader,
                                                    pb::UploadCheckpointResponse* response) {
  if (absl::Status s = Admit(ctx); !s.ok()) return ToGrpcStatus(s);
  CheckpointStore* store = manager_->checkpoints();
  if (store == nullptr) return ToGrpcStatus(absl::UnimplementedError("this server keeps no checkpoints"));
  pb::UploadCheckpointChunk chunk;
  if (!reader->Read(&chunk) || !chunk.has_header()) {
    return ToGrpcStatus(absl::InvalidArgumentError("UploadCheckpoint must start with a header"));
  }
  const pb::CheckpointHeader h = chunk.header();
  if (auto s = manager_->CheckLease(h.job_id(), h.lease_id()); !s.ok()) return ToGrpcStatus(s);
  auto upload = store->BeginUpload(h.job_id(), h.epoch(), h.step(), h.epoch_end(), h.size_bytes(), h.sha256());
  if (!upload.ok()) return ToGrpcStatus(upload.status());
  while (reader->Read(&chunk)) {
    if (!chunk.has_data()) return ToGrpcStatus(absl::InvalidArgumentError("UploadCheckpoint: a second header"));
    if (auto s = (*upload)->Append(chunk.data()); !s.ok()) return ToGrpcStatus(s);
  }
  // The lease may have been lost while the bytes came: store nothing then.
  if (auto s = manager_->CheckLease(h.job_id(), h.lease_id()); !s.ok()) return ToGrpcStatus(s);
  auto stored = store->Commit(*std::move(upload));
  if (!stored.ok()) return ToGrpcStatus(stored.status());
  response->set_number(stored->number);
  return grpc::Status::OK;
}

grpc::Status WorkerGatewayService::FetchCheckpoint(grpc::ServerContext* ctx,
                                                   const pb::FetchCheckpointRequest* request,
                                                   grpc::ServerWriter<pb::CheckpointChunk>* writer) {
  if (absl::Status s = Admit(ctx); !s.ok()) return ToGrpcStatus(s);
  CheckpointStore* store = manager_->checkpoints();
  if (store == nullptr) return ToGrpcStatus(absl::UnimplementedError("this server keeps no checkpoints"));
  if (auto s = manager_->CheckLease(request->job_id(), request->lease_id()); !s.ok()) return ToGrpcStatus(s);
  // A damaged checkpoint is passed over for the one before, and said so in
  // the job's events.
  auto newest = store->Newest(
      request->job_id(),
      [&](const CheckpointInfo& c, const std::string& why) {
        pb::JobEvent warning;
        warning.mutable_log()->set_level("warning");
        warning.mutable_log()->set_message(absl::StrCat("checkpoint ", c.number, " (epoch ", c.epoch, ", step ",
                                                        c.step, ") is damaged: ", why,
                                                        "; resuming from the one before"));
        manager_->RecordEvent(request->job_id(), request->lease_id(), std::move(warning)).IgnoreError();
      },
      request->before());
  if (!newest.ok()) return ToGrpcStatus(newest.status());
  auto source = transfer::FileSource::Open(newest->path, newest->sha256);
  if (!source.ok()) return ToGrpcStatus(source.status());
  pb::CheckpointHeader header;
  header.set_job_id(request->job_id());
  header.set_epoch(newest->epoch);
  header.set_step(newest->step);
  header.set_epoch_end(newest->epoch_end);
  header.set_size_bytes(newest->size_bytes);
  header.set_sha256(newest->sha256);
  header.set_number(newest->number);
  const absl::Status sent = transfer::SendFile(
      **source,
      [&](int64_t offset, std::string data) {
        pb::CheckpointChunk c;
        c.set_offset(offset);
        if (offset == 0) {
          c.set_total_size((*source)->size());
          c.set_sha256((*source)->sha256());
          *c.mutable_header() = header;
        }
        c.set_data(std::move(data));
        return !ctx->IsCancelled() && writer->Write(c);
      },
      absl::StrCat("checkpoint of job ", request->job_id()));
  if (absl::IsUnavailable(sent)) return grpc::Status(grpc::StatusCode::CANCELLED, "worker went away");
  return ToGrpcStatus(sent);
}

}  // namespace ft::server
