#include "client/client.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "common/grpc_status/grpc_status.h"
#include "common/transfer/transfer.h"
#include "common/util/status.h"

namespace ft::client {
namespace {

constexpr auto kUnaryTimeout = std::chrono::seconds(60);
constexpr auto kFirstReconnect = std::chrono::milliseconds(200);
constexpr auto kMaxReconnect = std::chrono::milliseconds(5000);
constexpr auto kReconnectFor = std::chrono::minutes(10);

void SetDeadline(grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() + kUnaryTimeout);
}

}  // namespace

Client::Client(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  channel_ = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  stub_ = pb::FineTune::NewStub(channel_);
}

Client::Client(std::shared_ptr<grpc::Channel> channel)
    : channel_(std::move(channel)), stub_(pb::FineTune::NewStub(channel_)) {}

absl::StatusOr<pb::Job> Client::Submit(const pb::JobSpec& spec, const std::string& request_id) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  pb::SubmitJobRequest req;
  *req.mutable_spec() = spec;
  req.set_request_id(request_id);
  pb::Job job;
  FT_RETURN_IF_ERROR(FromGrpcStatus(stub_->SubmitJob(&ctx, req, &job)));
  return job;
}

absl::StatusOr<pb::Job> Client::Get(const std::string& job_id) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  pb::GetJobRequest req;
  req.set_job_id(job_id);
  pb::Job job;
  FT_RETURN_IF_ERROR(FromGrpcStatus(stub_->GetJob(&ctx, req, &job)));
  return job;
}

absl::StatusOr<std::vector<pb::Job>> Client::List(int limit, const std::string& tenant) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  pb::ListJobsRequest req;
  req.set_limit(limit);
  req.set_tenant(tenant);
  pb::ListJobsResponse resp;
  FT_RETURN_IF_ERROR(FromGrpcStatus(stub_->ListJobs(&ctx, req, &resp)));
  return std::vector<pb::Job>(resp.jobs().begin(), resp.jobs().end());
}

absl::StatusOr<pb::Job> Client::Cancel(const std::string& job_id) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  pb::CancelJobRequest req;
  req.set_job_id(job_id);
  pb::Job job;
  FT_RETURN_IF_ERROR(FromGrpcStatus(stub_->CancelJob(&ctx, req, &job)));
  return job;
}

absl::StatusOr<pb::Job> Client::Watch(const std::string& job_id, int64_t from_sequence,
                                      const std::function<void(const pb::JobEvent&)>& on_event) {
  // The server may restart under a long watch: once the stream has been up,
  // a lost server is waited for (with backoff), and the watch goes on from
  // the next sequence, so that the caller sees every event exactly once.
  int64_t next = from_sequence;
  bool connected = false;
  auto backoff = kFirstReconnect;
  // Waited for kReconnectFor from when the server was lost (an event read
  // since then starts the wait afresh), however long the watch has run.
  // A flag and a time rather than a std::optional, which GCC 12 at -O3
  // wrongly reports as maybe-uninitialized (an error with FT_WERROR).
  bool lost = false;
  std::chrono::steady_clock::time_point lost_since{};
  auto gave_up = [&] {
    const auto now = std::chrono::steady_clock::now();
    if (!lost) {
      lost = true;
      lost_since = now;
    }
    return now - lost_since > kReconnectFor;
  };
  while (true) {
    grpc::ClientContext ctx;
    pb::WatchJobRequest req;
    req.set_job_id(job_id);
    req.set_from_sequence(next);
    auto reader = stub_->WatchJob(&ctx, req);
    pb::JobEvent event;
    while (reader->Read(&event)) {
      connected = true;
      lost = false;
      backoff = kFirstReconnect;
      next = event.sequence() + 1;
      on_event(event);
    }
    const absl::Status finished = FromGrpcStatus(reader->Finish());
    if (finished.ok()) break;
    if (!connected || !absl::IsUnavailable(finished) || gave_up()) return finished;
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, kMaxReconnect);
  }
  while (true) {
    auto job = Get(job_id);
    if (job.ok() || !absl::IsUnavailable(job.status()) || gave_up()) return job;
    std::this_thread::sleep_for(backoff);
  }
}

absl::StatusOr<std::vector<pb::Model>> Client::ListModels(const std::string& tenant) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  pb::ListModelsResponse resp;
  pb::ListModelsRequest req;
  req.set_tenant(tenant);
  FT_RETURN_IF_ERROR(FromGrpcStatus(stub_->ListModels(&ctx, req, &resp)));
  return std::vector<pb::Model>(resp.models().begin(), resp.models().end());
}

absl::StatusOr<pb::Model> Client::GetModel(const std::string& model_id) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  pb::GetModelRequest req;
  req.set_model_id(model_id);
  pb::Model model;
  FT_RETURN_IF_ERROR(FromGrpcStatus(stub_->GetModel(&ctx, req, &model)));
  return model;
}

absl::Status Client::DeleteModel(const std::string& model_id) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  pb::DeleteModelRequest req;
  req.set_model_id(model_id);
  pb::DeleteModelResponse resp;
  return FromGrpcStatus(stub_->DeleteModel(&ctx, req, &resp));
}

absl::StatusOr<std::vector<std::string>> Client::DownloadModel(const std::string& model_id,
                                                               const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  grpc::ClientContext ctx;
  pb::DownloadModelRequest req;
  req.set_model_id(model_id);
  auto reader = stub_->DownloadModel(&ctx, req);
  // The files arrive one after another; each chunk names its file.
  struct File {
    std::unique_ptr<transfer::FileSink> sink;
    int64_t size = -1;
    std::string sha256;
  };
  std::map<std::string, File> files;
  pb::ModelChunk chunk;
  absl::Status status;
  while (status.ok() && reader->Read(&chunk)) {
    if (chunk.file().find('/') != std::string::npos || chunk.file().empty() || chunk.file()[0] == '.') {
      status = absl::DataLossError(absl::StrCat("server sent a bad file name '", chunk.file(), "'"));
      break;
    }
    File& f = files[chunk.file()];
    if (f.sink == nullptr) {
      auto sink = transfer::FileSink::Create((std::filesystem::path(dir) / chunk.file()).string(), chunk.file());
      if (!sink.ok()) {
        status = absl::PermissionDeniedError(sink.status().message());
        break;
      }
      f.sink = *std::move(sink);
      f.size = chunk.total_size();
      f.sha256 = chunk.sha256();
    }
    status = f.sink->Append(chunk.offset(), chunk.data());
  }
  if (!status.ok()) ctx.TryCancel();
  const absl::Status finished = FromGrpcStatus(reader->Finish());
  FT_RETURN_IF_ERROR(status);
  FT_RETURN_IF_ERROR(finished);
  std::vector<std::string> written;
  for (auto& [name, f] : files) {
    FT_RETURN_IF_ERROR(f.sink->Commit(f.size, f.sha256));
    written.push_back(f.sink->path());
  }
  return written;
}

absl::StatusOr<pb::ValidationReport> Client::Validate(const pb::JobSpec& spec) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(15));
  pb::SubmitJobRequest req;
  *req.mutable_spec() = spec;
  pb::ValidationReport report;
  FT_RETURN_IF_ERROR(FromGrpcStatus(stub_->ValidateJob(&ctx, req, &report)));
  return report;
}

absl::StatusOr<pb::PredictResponse> Client::Predict(const std::string& model_id,
                                                    const std::vector<std::string>& files, int top_k) {
  pb::PredictRequest req;
  req.set_model_id(model_id);
  req.set_top_k(top_k);
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", f));
    req.add_images(std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()));
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(3));
  pb::PredictResponse resp;
  FT_RETURN_IF_ERROR(FromGrpcStatus(stub_->Predict(&ctx, req, &resp)));
  return resp;
}

absl::Status Client::Health() {
  // grpc.health.v1.Health/Check with an empty service name, as a raw call so
  // that the client needs no generated health stubs.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::GenericStub generic(channel_);
  std::string empty_request;  // HealthCheckRequest{service: ""} encodes to no bytes
  grpc::Slice slice(empty_request);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::Status status;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                    [&](grpc::Status s) {
                      std::lock_guard<std::mutex> lock(mu);
                      status = s;
                      done = true;
                      cv.notify_one();
                    });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  FT_RETURN_IF_ERROR(FromGrpcStatus(status));
  std::vector<grpc::Slice> slices;
  response.Dump(&slices);
  std::string bytes;
  for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // HealthCheckResponse{status: SERVING=1} is field 1, varint 1: bytes 08 01.
  if (bytes != std::string("\x08\x01", 2)) return absl::UnavailableError("server is not SERVING");
  return absl::OkStatus();
}

}  // namespace ft::client
