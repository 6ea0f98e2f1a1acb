// Client's dataset calls: UploadDataset, GetDataset, ListDatasets, DeleteDataset.
#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "grpcpp/grpcpp.h"
#include "common/grpc_status/grpc_status.h"
#include "common/transfer/transfer.h"
#include "common/util/status.h"

namespace ft::client {
namespace {

constexpr auto kUnaryTimeout = std::chrono::seconds(60);
constexpr auto kFirstPoll = std::chrono::milliseconds(50);
constexpr auto kMaxPoll = std::chrono::milliseconds(1000);

}  // namespace

absl::StatusOr<pb::Dataset> Client::UploadDataset(const std::string& archive_path, const std::string& name,
                                                  const std::string& sha256, const std::string& format) {
  FT_ASSIGN_OR_RETURN(auto source, transfer::FileSource::Open(archive_path, sha256));
  grpc::ClientContext ctx;
  pb::Dataset dataset;
  auto writer = stub_->UploadDataset(&ctx, &dataset);
  pb::UploadDatasetRequest header;
  header.mutable_header()->set_name(name);
  header.mutable_header()->set_size_bytes(source->size());
  header.mutable_header()->set_sha256(source->sha256());
  header.mutable_header()->set_format(format);
  // A failed write means the server has already answered (e.g. the size is
  // over its limit); Finish() then carries its status.
  const absl::Status sent = transfer::UploadFile(*writer, header, *source, absl::StrCat("uploading ", archive_path));
  FT_RETURN_IF_ERROR(transfer::UploadOutcome(sent, FromGrpcStatus(writer->Finish())));
  // The server extracts and validates the archive after answering.
  auto poll = kFirstPoll;
  while (dataset.state() == pb::DATASET_EXTRACTING) {
    std::this_thread::sleep_for(poll);
    poll = std::min(poll * 2, kMaxPoll);
    FT_ASSIGN_OR_RETURN(dataset, GetDataset(name));
  }
  if (dataset.state() == pb::DATASET_FAILED) {
    const int code = dataset.error_code() > 0 && dataset.error_code() <= 16 ? dataset.error_code() : 2;
    return absl::Status(static_cast<absl::StatusCode>(code), dataset.error());
  }
  return dataset;
}

absl::StatusOr<pb::Dataset> Client::GetDataset(const std::string& name, const std::string& tenant) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kUnaryTimeout);
  pb::GetDatasetRequest req;
  req.set_name(name);
  req.set_tenant(tenant);
  pb::Dataset dataset;
  FT_RETURN_IF_ERROR(FromGrpcStatus(stub_->GetDataset(&ctx, req, &dataset)));
  return dataset;
}

absl::StatusOr<std::vector<pb::Dataset>> Client::ListDatasets(const std::string& tenant) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kUnaryTimeout);
  pb::ListDatasetsResponse resp;
  pb::ListDatasetsRequest req;
  req.set_tenant(tenant);
  FT_RETURN_IF_ERROR(FromGrpcStatus(stub_->ListDatasets(&ctx, req, &resp)));
  return std::vector<pb::Dataset>(resp.datasets().begin(), resp.datasets().end());
}

absl::Status Client::DeleteDataset(const std::string& name, const std::string& tenant) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kUnaryTimeout);
  pb::DeleteDatasetRequest req;
  req.set_name(name);
  req.set_tenant(tenant);
  pb::DeleteDatasetResponse resp;
  return FromGrpcStatus(stub_->DeleteDataset(&ctx, req, &resp));
}

}  // namespace ft::client
