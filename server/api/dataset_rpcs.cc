// The dataset RPCs of FineTuneService (UploadDataset, ListDatasets,
// DeleteDataset) and of WorkerGatewayService (FetchDataset): thin layers over
// datasets::DatasetStore.
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
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
// upload; then commits it. Committing extracts and scans the archive, which
// can take minutes, so it runs on a thread the reactor owns rather than on a
// gRPC callback thread. OnDone joins it (or, when OnDone runs on that very
// thread, after its last use of the reactor, detaches it).
class UploadReactor final : public grpc::ServerReadReactor<pb::UploadDatasetRequest> {
 public:
  UploadReactor(datasets::DatasetStore* store, pb::Dataset* response) : store_(store), response_(response) {
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
      committer_ = std::thread([this] {
        // Until committer_ is assigned, OnDone must not look at it.
        assigned_.WaitForNotification();
        auto dataset = store_->Commit(std::move(upload_));
        if (dataset.ok()) *response_ = *std::move(dataset);
        Finish(ToGrpcStatus(dataset.status()));
      });
      assigned_.Notify();
      return;
    }
    absl::Status status;
    if (request_.has_header()) {
      if (upload_) {
        status = absl::InvalidArgumentError("UploadDataset: a second header");
      } else {
        auto upload = store_->BeginUpload(request_.header());
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

  void OnDone() override {
    if (committer_.joinable()) {
      if (committer_.get_id() == std::this_thread::get_id()) {
        committer_.detach();
      } else {
        committer_.join();
      }
    }
    delete this;
  }

 private:
  datasets::DatasetStore* store_;
  pb::Dataset* response_;
  pb::UploadDatasetRequest request_;
  std::unique_ptr<datasets::DatasetUpload> upload_;
  std::thread committer_;
  absl::Notification assigned_;
};

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const absl::Status& status) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

grpc::ServerReadReactor<pb::UploadDatasetRequest>* FineTuneService::UploadDataset(grpc::CallbackServerContext* ctx,
                                                                                pb::Dataset* response) {
  return new UploadReactor(manager_->dataset_store(), response);
}

grpc::ServerUnaryReactor* FineTuneService::ListDatasets(grpc::CallbackServerContext* ctx,
                                                        const pb::ListDatasetsRequest* request,
                                                        pb::ListDatasetsResponse* response) {
  if (manager_->dataset_store() == nullptr) return Done(ctx, NoStore());
  auto datasets = manager_->dataset_store()->List();
  if (datasets.ok()) {
    for (auto& d : *datasets) *response->add_datasets() = std::move(d);
  }
  return Done(ctx, datasets.status());
}

grpc::ServerUnaryReactor* FineTuneService::DeleteDataset(grpc::CallbackServerContext* ctx,
                                                         const pb::DeleteDatasetRequest* request,
                                                         pb::DeleteDatasetResponse* response) {
  return Done(ctx, DeleteUnusedDataset(manager_, request->name()));
}

grpc::Status WorkerGatewayService::FetchDataset(grpc::ServerContext* ctx, const pb::FetchDatasetRequest* request,
                                                grpc::ServerWriter<pb::DatasetChunk>* writer) {
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
