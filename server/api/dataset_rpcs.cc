// The dataset RPCs of FineTuneService (UploadDataset, ListDatasets,
// DeleteDataset) and of WorkerGatewayService (FetchDataset): thin layers over
// datasets::DatasetStore.
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "server/api/finetune_service.h"
#include "common/grpc_status/grpc_status.h"
#include "common/transfer/transfer.h"
#include "server/api/worker_gateway_service.h"
#include "server/jobs/dataset_usage.h"

namespace ft::server {
namespace {

absl::Status NoStore() {
  return absl::FailedPreconditionError("this server does not keep uploaded datasets");
}

// Reads the header and the chunks, one read in flight, appending each to the
// upload; then commits it on the slow executor (it syncs the archive to disk
// and binds the name; the extraction itself runs in the store's own pool, the
// record saying EXTRACTING until it is READY or FAILED). The reactor owns no
// thread. Lifetime: deleted in OnDone, which gRPC calls only after Finish,
// and Finish comes after the commit task's last use of the reactor.
class UploadReactor final : public grpc::ServerReadReactor<pb::UploadDatasetRequest> {
 public:
  // `admitted` is the call guard's verdict; a refused call reads nothing.
  // The upload belongs to `caller`'s tenant and counts against its storage
  // quota, checked against the size the header declares.
  UploadReactor(JobManager* manager, util::Executor* executor, pb::Dataset* response,
                const absl::Status& admitted, Caller caller)
      : manager_(manager),
        store_(manager->dataset_store()),
        executor_(executor),
        response_(response),
        caller_(std::move(caller)) {
    if (!admitted.ok()) {
      Finish(ToGrpcStatus(admitted));
      return;
    }
    if (store_ == nullptr) {
      Finish(ToGrpcStatus(NoStore()));
      return;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The client finished sending (or went away: Commit then sees too few
      // bytes and the finish goes nowhere).
      if (!upload_) {
        Finish(ToGrpcStatus(absl::InvalidArgumentError("UploadDataset must start with a header")));
        return;
      }
      if (!executor_->TrySchedule([this] {
            auto dataset = store_->Commit(std::move(upload_));
            if (dataset.ok()) *response_ = *std::move(dataset);
            Finish(ToGrpcStatus(dataset.status()));
          })) {
        Finish(ToGrpcStatus(absl::UnavailableError("the server is shutting down")));
      }
      return;
    }
    absl::Status status;
    if (request_.has_header()) {
      if (upload_) {
        status = absl::InvalidArgumentError("UploadDataset: a second header");
      } else {
        status = CheckStorageQuota(manager_, caller_, request_.header().size_bytes());
        auto upload = status.ok() ? store_->BeginUpload(caller_.tenant, request_.header())
                                  : absl::StatusOr<std::unique_ptr<datasets::DatasetUpload>>(status);
        if (upload.ok()) {
          upload_ = *std::move(upload);
        } else {
          status = upload.status();
        }
      }
    } else if (!upload_) {
      status = absl::InvalidArgumentError("UploadDataset must start with a header");
    } else {
      status = upload_->Append(request_.data());
    }
    if (!status.ok()) {
      upload_.reset();
      Finish(ToGrpcStatus(status));
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  JobManager* manager_;
  datasets::DatasetStore* store_;
  util::Executor* executor_;
  pb::Dataset* response_;
  const Caller caller_;
  pb::UploadDatasetRequest request_;
  std::unique_ptr<datasets::DatasetUpload> upload_;
};

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const absl::Status& status) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

grpc::ServerReadReactor<pb::UploadDatasetRequest>* FineTuneService::UploadDataset(grpc::CallbackServerContext* ctx,
                                                                                pb::Dataset* response) {
  absl::Status admitted = Admit(ctx);
  return new UploadReactor(manager_, options_.slow, response, admitted, CallerOf(ctx));
}

grpc::ServerUnaryReactor* FineTuneService::ListDatasets(grpc::CallbackServerContext* ctx,
                                                        const pb::ListDatasetsRequest* request,
                                                        pb::ListDatasetsResponse* response) {
  if (absl::Status s = Admit(ctx); !s.ok()) return Done(ctx, s);
  if (manager_->dataset_store() == nullptr) return Done(ctx, NoStore());
  auto tenant = ListedTenant(CallerOf(ctx), request->tenant());
  if (!tenant.ok()) return Done(ctx, tenant.status());
  auto datasets = manager_->dataset_store()->List(*tenant);
  if (datasets.ok()) {
    for (auto& d : *datasets) *response->add_datasets() = std::move(d);
  }
  return Done(ctx, datasets.status());
}

grpc::ServerUnaryReactor* FineTuneService::GetDataset(grpc::CallbackServerContext* ctx,
                                                      const pb::GetDatasetRequest* request, pb::Dataset* response) {
  if (absl::Status s = Admit(ctx); !s.ok()) return Done(ctx, s);
  if (manager_->dataset_store() == nullptr) return Done(ctx, NoStore());
  // Names are per tenant: another tenant's "pets" is simply not in this one.
  auto tenant = NamedTenant(CallerOf(ctx), request->tenant());
  if (!tenant.ok()) return Done(ctx, tenant.status());
  auto dataset = manager_->dataset_store()->Get(*tenant, request->name());
  if (dataset.ok()) *response = *std::move(dataset);
  return Done(ctx, dataset.status());
}

grpc::ServerUnaryReactor* FineTuneService::DeleteDataset(grpc::CallbackServerContext* ctx,
                                                         const pb::DeleteDatasetRequest* request,
                                                         pb::DeleteDatasetResponse* response) {
  if (absl::Status s = Admit(ctx); !s.ok()) return Done(ctx, s);
  auto tenant = NamedTenant(CallerOf(ctx), request->tenant());
  if (!tenant.ok()) return Done(ctx, tenant.status());
  return Defer(
      ctx, options_.slow,
      [this, request, tenant = *tenant] { return DeleteUnusedDataset(manager_, tenant, request->name()); },
      [] { return absl::UnavailableError("the server is shutting down"); });
}

grpc::Status WorkerGatewayService::FetchDataset(grpc::ServerContext* ctx, const pb::FetchDatasetRequest* request,
                                                grpc::ServerWriter<pb::DatasetChunk>* writer) {
  if (absl::Status s = Admit(ctx); !s.ok()) return ToGrpcStatus(s);
  if (manager_->dataset_store() == nullptr) return ToGrpcStatus(NoStore());
  auto path = manager_->dataset_store()->ArchivePath(request->digest());
  if (!path.ok()) return ToGrpcStatus(path.status());
  // Sent under the digest it is stored by; the worker hashes what arrives and
  // refuses a mismatch (a file:// archive changed since submit).
  auto source = transfer::FileSource::Open(*path, request->digest());
  if (!source.ok()) {
    return ToGrpcStatus(absl::NotFoundError(absl::StrCat("cannot open the archive of dataset ", request->digest())));
  }
  const absl::Status sent = transfer::SendFile(
      **source,
      [&](int64_t offset, std::string data) {
        pb::DatasetChunk chunk;
        chunk.set_offset(offset);
        if (offset == 0) {
          chunk.set_total_size((*source)->size());
          chunk.set_sha256((*source)->sha256());
        }
        chunk.set_data(std::move(data));
        return !ctx->IsCancelled() && writer->Write(chunk);
      },
      absl::StrCat("dataset ", request->digest().substr(0, 12)));
  if (absl::IsUnavailable(sent)) return grpc::Status(grpc::StatusCode::CANCELLED, "worker went away");
  return ToGrpcStatus(sent);
}

}  // namespace ft::server
