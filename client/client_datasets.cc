// Client's dataset calls: UploadDataset, ListDatasets, DeleteDataset.
#include <chrono>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "grpcpp/grpcpp.h"
#include "proto/util/sha256.h"
#include "proto/util/status.h"

namespace ft::client {
namespace {

constexpr auto kUnaryTimeout = std::chrono::seconds(60);
constexpr size_t kChunkBytes = 256 * 1024;

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace

absl::StatusOr<pb::Dataset> Client::UploadDataset(const std::string& archive_path, const std::string& name,
                                                  const std::string& sha256, const std::string& format) {
  std::ifstream in(archive_path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", archive_path));
  const int64_t size = static_cast<int64_t>(in.tellg());
  in.seekg(0);
  std::string digest = sha256;
  if (digest.empty()) {
    FT_ASSIGN_OR_RETURN(digest, util::Sha256File(archive_path));
  }

  grpc::ClientContext ctx;
  pb::Dataset dataset;
  auto writer = stub_->UploadDataset(&ctx, &dataset);
  pb::UploadDatasetRequest header;
  header.mutable_header()->set_name(name);
  header.mutable_header()->set_size_bytes(size);
  header.mutable_header()->set_sha256(digest);
  header.mutable_header()->set_format(format);
  // A failed write means the server has already answered (e.g. the size is
  // over its limit); Finish() then carries its status.
  bool ok = writer->Write(header);
  std::vector<char> buffer(kChunkBytes);
  int64_t sent = 0;
  while (ok && sent < size) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const std::streamsize n = in.gcount();
    if (n <= 0) break;
    pb::UploadDatasetRequest chunk;
    chunk.set_data(buffer.data(), static_cast<size_t>(n));
    ok = writer->Write(chunk);
    sent += n;
  }
  writer->WritesDone();
  FT_RETURN_IF_ERROR(FromGrpc(writer->Finish()));
  return dataset;
}

absl::StatusOr<std::vector<pb::Dataset>> Client::ListDatasets() {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kUnaryTimeout);
  pb::ListDatasetsResponse resp;
  FT_RETURN_IF_ERROR(FromGrpc(stub_->ListDatasets(&ctx, pb::ListDatasetsRequest(), &resp)));
  return std::vector<pb::Dataset>(resp.datasets().begin(), resp.datasets().end());
}

absl::Status Client::DeleteDataset(const std::string& name) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kUnaryTimeout);
  pb::DeleteDatasetRequest req;
  req.set_name(name);
  pb::DeleteDatasetResponse resp;
  return FromGrpc(stub_->DeleteDataset(&ctx, req, &resp));
}

}  // namespace ft::client
