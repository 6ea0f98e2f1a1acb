#include "worker/agent/agent.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <iostream>
#include <optional>
#include <thread>

#include <torch/script.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/grpc_status/grpc_status.h"
#include "common/transfer/transfer.h"
#include "grpcpp/grpcpp.h"
#include "common/util/files.h"
#include "common/util/log.h"
#include "common/util/status.h"
#include "worker/agent/device_memory.h"
#include "worker/agent/job_session.h"
#include "worker/agent/worker_metrics.h"
#include "worker/export/torchscript.h"
#include "worker/train/trainer.h"

namespace ft::worker {
namespace {

constexpr int kLeaseWaitSeconds = 5;
// NVML answers a memory query in well under a millisecond.
constexpr absl::Duration kDeviceMemoryInterval = absl::Seconds(5);

// Calls `tick` at once and then every `interval`, on its own thread, until
// destroyed.
class Ticker {
 public:
  Ticker(absl::Duration interval, std::function<void()> tick)
      : thread_([this, interval, tick = std::move(tick)] {
          do {
            tick();
          } while (!stop_.WaitForNotificationWithTimeout(interval));
        }) {}
  ~Ticker() {
    stop_.Notify();
    thread_.join();
  }
  Ticker(const Ticker&) = delete;
  Ticker& operator=(const Ticker&) = delete;

 private:
  absl::Notification stop_;  // before thread_, which uses it
  std::thread thread_;
};

// Fetches stored model `model_id`'s model.pt into `job_dir`; returns its path.
absl::StatusOr<std::string> FetchModel(pb::WorkerGateway::Stub* stub, const std::string& job_dir,
                                       const std::string& model_id) {
  FT_RETURN_IF_ERROR(util::MakeDirs(job_dir));
  const std::string path = absl::StrCat(job_dir, "/source-", model_id, ".pt");
  grpc::ClientContext ctx;
  pb::FetchModelRequest req;
  req.set_model_id(model_id);
  auto reader = stub->FetchModel(&ctx, req);
  FT_ASSIGN_OR_RETURN(auto sink, transfer::FileSink::Create(path, absl::StrCat("model ", model_id)));
  FT_RETURN_IF_ERROR(transfer::ReceiveFile<pb::ModelChunk>(
      *sink, [&](pb::ModelChunk* c) { return reader->Read(c); },
      [&] { ctx.TryCancel(); },
      [&] {
        return FromGrpcStatus(reader->Finish(), absl::StrCat("fetching model ", model_id));
      }));
  return path;
}

// Uploads the model file at `model_path`, described by `metadata_json`, for
// `lease`; returns the id the server stored it under.
absl::StatusOr<std::string> UploadModel(pb::WorkerGateway::Stub* stub, const pb::Lease& lease,
                                        const std::string& model_path, const std::string& metadata_json) {
  FT_ASSIGN_OR_RETURN(auto source, transfer::FileSource::Open(model_path));
  grpc::ClientContext ctx;
  pb::UploadModelResponse up;
  auto writer = stub->UploadModel(&ctx, &up);
  pb::UploadModelChunk header;
  header.mutable_header()->set_lease_id(lease.lease_id());
  header.mutable_header()->set_job_id(lease.job_id());
  header.mutable_header()->set_metadata_json(metadata_json);
  header.mutable_header()->set_size_bytes(source->size());
  header.mutable_header()->set_sha256(source->sha256());
  // A failed write means the server has answered; Finish() says why.
  const absl::Status sent = transfer::UploadFile(*writer, header, *source, "uploading the model");
  FT_RETURN_IF_ERROR(transfer::UploadOutcome(sent, FromGrpcStatus(writer->Finish(), "uploading the model")));
  return up.model_id();
}

// Saves the trained model as <job_dir>/model.pt and uploads it; returns the
// stored model's id.
absl::StatusOr<std::string> ExportModel(pb::WorkerGateway::Stub* stub, const pb::Lease& lease,
                                        const std::string& job_dir, const TrainResult& trained) {
  FT_RETURN_IF_ERROR(util::MakeDirs(job_dir));
  const std::string model_path = job_dir + "/model.pt";
  FT_RETURN_IF_ERROR(SaveTorchScript(trained.model, model_path));
  return UploadModel(stub, lease, model_path, trained.metadata_json);
}

}  // namespace

Agent::Agent(const AgentOptions& options) : options_(options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  channel_ = options.channel != nullptr
                 ? options.channel
                 : grpc::CreateCustomChannel(options.server_address, grpc::InsecureChannelCredentials(), args);
  stub_ = pb::WorkerGateway::NewStub(channel_);
  DatasetCacheOptions dataset_options;
  dataset_options.root = options.work_dir + "/datasets";
  dataset_options.fetch = options.fetch_datasets;
  datasets_ = std::make_unique<DatasetCache>(dataset_options, stub_.get());
  if (options.metrics != nullptr && options.device.is_cuda()) {
    DeviceMemoryOptions memory_options;
    memory_options.device = options.device.str();
    memory_options.cuda_visible_devices = CudaVisibleDevicesFromEnvironment();
    auto memory = DeviceMemory::Create(memory_options);
    if (memory.ok()) {
      device_memory_ = *std::move(memory);
      util::Log("info", "finetune-worker", "device memory read through NVML",
                {{"device", device_memory_->description()}});
    } else {
      util::Log("warning", "finetune-worker", "no device memory metric: finetune_worker_device_memory_bytes stays 0",
                {{"error", std::string(memory.status().message())}});
    }
  }
}

Agent::~Agent() = default;

bool Agent::ParentGone() const {
  return options_.parent_pid > 0 && ::getppid() != options_.parent_pid;
}

absl::Status Agent::Run() {
  // Sampled between jobs too: LibTorch's caching allocator keeps device
  // memory after a job, and the gauge shows what the device really holds.
  std::optional<Ticker> device_memory_sampler;
  if (device_memory_ != nullptr) {
    device_memory_sampler.emplace(kDeviceMemoryInterval, [this, warned = false]() mutable {
      auto usage = device_memory_->Read();
      if (!usage.ok()) {
        // Unknown reads as 0, as on CPU.
        options_.metrics->SetDeviceMemory(0);
        options_.metrics->SetDeviceMemoryTotal(0);
        if (!warned) {
          util::Log("warning", "finetune-worker", "cannot read device memory; the gauge shows 0 meanwhile",
                    {{"error", std::string(usage.status().message())}});
        }
        warned = true;
        return;
      }
      options_.metrics->SetDeviceMemory(static_cast<double>(usage->used_bytes));
      options_.metrics->SetDeviceMemoryTotal(static_cast<double>(usage->total_bytes));
    });
  }
  int jobs = 0;
  int failures = 0;
  while (!stopping_ && !ParentGone()) {
    pb::LeaseJobRequest request;
    request.mutable_worker()->set_worker_id(options_.worker_id);
    request.mutable_worker()->set_device(options_.device.str());
    request.mutable_worker()->set_threads(options_.threads);
    char host[256] = {0};
    ::gethostname(host, sizeof(host) - 1);
    request.mutable_worker()->set_hostname(host);
    request.set_wait_seconds(kLeaseWaitSeconds);
    pb::LeaseJobResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(kLeaseWaitSeconds + 10));
    grpc::Status s = stub_->LeaseJob(&ctx, request, &response);
    if (!s.ok()) {
      // The server may be starting or restarting: back off and retry.
      if (++failures % 10 == 1) {
        std::cerr << "finetune-worker: cannot lease from " << options_.server_address << ": "
                  << s.error_message() << std::endl;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min(5000, 200 * failures)));
      continue;
    }
    failures = 0;
    if (!response.leased()) continue;
    absl::Status run = RunOne(response);
    if (!run.ok()) {
      std::cerr << "finetune-worker: job " << response.lease().job_id() << ": " << run.message() << std::endl;
    }
    if (options_.max_jobs > 0 && ++jobs >= options_.max_jobs) break;
  }
  return absl::OkStatus();
}

TrainerHooks Agent::HooksFor(JobSession* session, const std::string& job_dir) {
  TrainerHooks hooks;
  hooks.on_progress = [session](const pb::Progress& p) {
    pb::JobEvent e;
    *e.mutable_progress() = p;
    session->SendEvent(std::move(e));
  };
  if (options_.metrics != nullptr) {
    hooks.on_step = [this](double seconds, int64_t images) { options_.metrics->OnStep(seconds, images); };
  }
  hooks.on_epoch = [this, session](const pb::EpochSummary& s) {
    if (options_.metrics != nullptr) options_.metrics->OnLoaderWait(s.loader_wait_seconds());
    pb::JobEvent e;
    *e.mutable_epoch() = s;
    session->SendEvent(std::move(e));
  };
  hooks.on_log = [session](const std::string& level, const std::string& message) {
    pb::JobEvent e;
    e.mutable_log()->set_level(level);
    e.mutable_log()->set_message(message);
    session->SendEvent(std::move(e));
  };
  hooks.cancelled = [this, session] { return session->cancelled() || stopping_ || ParentGone(); };
  hooks.fetch_model = [this, job_dir](const std::string& model_id) {
    return FetchModel(stub_.get(), job_dir, model_id);
  };
  return hooks;
}

absl::StatusOr<TrainResult> Agent::TrainJob(const pb::LeaseJobResponse& lease, const TrainerHooks& hooks) {
  TrainerOptions trainer_options;
  trainer_options.device = options_.device;
  trainer_options.job_id = lease.lease().job_id();
  trainer_options.loader_threads = std::max(1, options_.threads / 2);
  trainer_options.decode_cache_bytes = options_.decode_cache_bytes;
  // Uploaded and archived datasets are fetched (or found cached) first.
  auto job = datasets_->Prepare(
      lease.job(), [&](const std::string& message) { hooks.on_log("info", message); }, hooks.cancelled);
  if (absl::IsCancelled(job.status())) {
    TrainResult stopped;
    stopped.cancelled = true;
    return stopped;
  }
  FT_RETURN_IF_ERROR(job.status());
  util::Log("info", "finetune-worker", "job started",
            {{"job_id", lease.lease().job_id()}, {"worker_id", options_.worker_id},
             {"attempt", absl::StrCat(lease.lease().attempt())}});
  return RunTraining(*job, trainer_options, hooks);
}

pb::JobResult Agent::Conclude(const absl::StatusOr<TrainResult>& trained, const pb::Lease& lease,
                              const std::string& job_dir, const TrainerHooks& hooks) {
  pb::JobResult result;
  if (!trained.ok()) {
    result.set_state(pb::FAILED);
    result.set_error(std::string(trained.status().message()));
    return result;
  }
  if (trained->cancelled) {
    result.set_state(pb::CANCELLED);
    return result;
  }
  pb::Progress p;
  p.set_phase("export");
  hooks.on_progress(p);
  const absl::StatusOr<std::string> model_id = ExportModel(stub_.get(), lease, job_dir, *trained);
  if (model_id.ok()) {
    result.set_state(pb::SUCCEEDED);
    result.set_model_id(*model_id);
    *result.mutable_metrics() = trained->metrics;
  } else {
    result.set_state(pb::FAILED);
    result.set_error(std::string(model_id.status().message()));
  }
  return result;
}

absl::Status Agent::RunOne(const pb::LeaseJobResponse& lease) {
  const std::string& job_id = lease.lease().job_id();
  FT_ASSIGN_OR_RETURN(std::unique_ptr<JobSession> session,
                      JobSession::Start(stub_.get(), lease.lease(), options_.worker_id));
  const std::string job_dir = absl::StrCat(options_.work_dir, "/", job_id);
  const TrainerHooks hooks = HooksFor(session.get(), job_dir);
  const absl::StatusOr<TrainResult> trained = TrainJob(lease, hooks);
  // With the lease lost there is nothing to report: the server re-queues the job.
  pb::JobResult result;
  if (!session->lease_lost()) result = Conclude(trained, lease.lease(), job_dir, hooks);
  util::Log(result.state() == pb::FAILED ? "warning" : "info", "finetune-worker", "job ended",
            {{"job_id", job_id},
             {"state", session->lease_lost() ? std::string("LEASE_LOST") : pb::JobState_Name(result.state())},
             {"error", result.error()}});
  if (result.state() != pb::JOB_STATE_UNSPECIFIED) session->SendResult(result);
  const absl::Status finished = session->Finish();
  std::error_code ec;
  std::filesystem::remove_all(job_dir, ec);
  if (session->lease_lost() && result.state() == pb::JOB_STATE_UNSPECIFIED) {
    return absl::AbortedError("lease lost; the server re-queues the job");
  }
  return finished;
}

}  // namespace ft::worker
