#include "worker/agent/agent.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <iostream>
#include <mutex>
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
#include "worker/agent/worker_metrics.h"
#include "worker/train/trainer.h"

namespace ft::worker {
namespace {

constexpr int kLeaseWaitSeconds = 5;
constexpr auto kHeartbeatInterval = std::chrono::milliseconds(1000);
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

}  // namespace

Agent::Agent(const AgentOptions& options) : options_(options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  channel_ = grpc::CreateCustomChannel(options.server_address, grpc::InsecureChannelCredentials(), args);
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

absl::Status Agent::RunOne(const pb::LeaseJobResponse& lease) {
  const std::string job_id = lease.lease().job_id();
  const std::string lease_id = lease.lease().lease_id();
  grpc::ClientContext stream_ctx;
  auto stream = stub_->RunJob(&stream_ctx);
  std::mutex write_mu;
  auto send = [&](const pb::WorkerMessage& m) {
    std::lock_guard<std::mutex> lock(write_mu);
    return stream->Write(m);
  };
  {
    pb::WorkerMessage hello;
    hello.mutable_hello()->set_lease_id(lease_id);
    hello.mutable_hello()->set_job_id(job_id);
    hello.mutable_hello()->set_worker_id(options_.worker_id);
    if (!send(hello)) return absl::UnavailableError("RunJob stream closed at hello");
  }
  std::atomic<bool> cancel{false}, lease_lost{false}, done{false};
  // Reader: cancellation and lease loss come down the stream.
  std::thread reader([&] {
    pb::ServerMessage m;
    while (stream->Read(&m)) {
      if (m.has_cancel()) cancel = true;
      if (m.lease_lost()) lease_lost = true;
    }
    if (!done) lease_lost = true;
  });
  std::thread heartbeat([&] {
    pb::WorkerMessage hb;
    hb.mutable_heartbeat();
    while (!done) {
      if (!send(hb)) break;
      for (int i = 0; i < 10 && !done; ++i) std::this_thread::sleep_for(kHeartbeatInterval / 10);
    }
  });

  auto send_event = [&](pb::JobEvent e) {
    pb::WorkerMessage m;
    *m.mutable_event() = std::move(e);
    send(m);
  };
  TrainerHooks hooks;
  hooks.on_progress = [&](const pb::Progress& p) {
    pb::JobEvent e;
    *e.mutable_progress() = p;
    send_event(std::move(e));
  };
  if (options_.metrics != nullptr) {
    hooks.on_step = [this](double seconds, int64_t images) { options_.metrics->OnStep(seconds, images); };
  }
  hooks.on_epoch = [&](const pb::EpochSummary& s) {
    if (options_.metrics != nullptr) options_.metrics->OnLoaderWait(s.loader_wait_seconds());
    pb::JobEvent e;
    *e.mutable_epoch() = s;
    send_event(std::move(e));
  };
  hooks.on_log = [&](const std::string& level, const std::string& message) {
    pb::JobEvent e;
    e.mutable_log()->set_level(level);
    e.mutable_log()->set_message(message);
    send_event(std::move(e));
  };
  hooks.cancelled = [&] { return cancel || lease_lost || stopping_ || ParentGone(); };
  const std::string job_dir = absl::StrCat(options_.work_dir, "/", job_id);
  hooks.fetch_model = [&](const std::string& model_id) -> absl::StatusOr<std::string> {
    FT_RETURN_IF_ERROR(util::MakeDirs(job_dir));
    const std::string path = absl::StrCat(job_dir, "/source-", model_id, ".pt");
    grpc::ClientContext ctx;
    pb::FetchModelRequest req;
    req.set_model_id(model_id);
    auto reader = stub_->FetchModel(&ctx, req);
    FT_ASSIGN_OR_RETURN(auto sink, transfer::FileSink::Create(path, absl::StrCat("model ", model_id)));
    FT_RETURN_IF_ERROR(transfer::ReceiveFile<pb::ModelChunk>(
        *sink, [&](pb::ModelChunk* c) { return reader->Read(c); },
        [&] { ctx.TryCancel(); },
        [&] {
          return FromGrpcStatus(reader->Finish(), absl::StrCat("fetching model ", model_id));
        }));
    return path;
  };

  TrainerOptions trainer_options;
  trainer_options.device = options_.device;
  trainer_options.job_id = job_id;
  trainer_options.loader_threads = std::max(1, options_.threads / 2);
  trainer_options.decode_cache_bytes = options_.decode_cache_bytes;
  // Uploaded and archived datasets are fetched (or found cached) first.
  auto job = datasets_->Prepare(
      lease.job(), [&](const std::string& message) { hooks.on_log("info", message); }, hooks.cancelled);
  absl::StatusOr<TrainResult> trained = absl::UnknownError("not trained");
  if (job.ok()) {
    util::Log("info", "finetune-worker", "job started",
              {{"job_id", job_id}, {"worker_id", options_.worker_id},
               {"attempt", absl::StrCat(lease.lease().attempt())}});
    trained = RunTraining(*job, trainer_options, hooks);
  } else if (absl::IsCancelled(job.status())) {
    TrainResult stopped;
    stopped.cancelled = true;
    trained = std::move(stopped);
  } else {
    trained = job.status();
  }

  pb::JobResult result;
  if (lease_lost) {
    done = true;
  } else if (!trained.ok()) {
    result.set_state(pb::FAILED);
    result.set_error(std::string(trained.status().message()));
  } else if (trained->cancelled) {
    result.set_state(pb::CANCELLED);
  } else {
    // Export and upload.
    pb::Progress p;
    p.set_phase("export");
    hooks.on_progress(p);
    absl::Status exported = util::MakeDirs(job_dir);
    const std::string model_path = job_dir + "/model.pt";
    if (exported.ok()) {
      try {
        trained->model.save(model_path);
      } catch (const std::exception& e) {
        exported = absl::InternalError(absl::StrCat("cannot save model.pt: ", e.what()));
      }
    }
    std::string model_id;
    if (exported.ok()) {
      auto source = transfer::FileSource::Open(model_path);
      if (!source.ok()) {
        exported = source.status();
      } else {
        grpc::ClientContext ctx;
        pb::UploadModelResponse up;
        auto writer = stub_->UploadModel(&ctx, &up);
        pb::UploadModelChunk header;
        header.mutable_header()->set_lease_id(lease_id);
        header.mutable_header()->set_job_id(job_id);
        header.mutable_header()->set_metadata_json(trained->metadata_json);
        header.mutable_header()->set_size_bytes((*source)->size());
        header.mutable_header()->set_sha256((*source)->sha256());
        // A failed write means the server has answered; Finish() says why.
        absl::Status sent = absl::UnavailableError("header refused");
        if (writer->Write(header)) {
          sent = transfer::SendFile(
              **source,
              [&](int64_t, std::string data) {
                pb::UploadModelChunk c;
                c.set_data(std::move(data));
                return writer->Write(c);
              },
              "uploading the model");
        }
        writer->WritesDone();
        const absl::Status finished = FromGrpcStatus(writer->Finish(), "uploading the model");
        // A local read error explains more than the server's size mismatch.
        exported = !sent.ok() && !absl::IsUnavailable(sent) ? sent : finished;
        model_id = up.model_id();
      }
    }
    if (exported.ok()) {
      result.set_state(pb::SUCCEEDED);
      result.set_model_id(model_id);
      *result.mutable_metrics() = trained->metrics;
    } else {
      result.set_state(pb::FAILED);
      result.set_error(std::string(exported.message()));
    }
  }
  util::Log(result.state() == pb::FAILED ? "warning" : "info", "finetune-worker", "job ended",
            {{"job_id", job_id},
             {"state", lease_lost ? std::string("LEASE_LOST") : pb::JobState_Name(result.state())},
             {"error", result.error()}});
  if (result.state() != pb::JOB_STATE_UNSPECIFIED) {
    pb::WorkerMessage m;
    *m.mutable_result() = result;
    send(m);
  }
  done = true;
  {
    std::lock_guard<std::mutex> lock(write_mu);
    stream->WritesDone();
  }
  heartbeat.join();
  reader.join();
  grpc::Status fin = stream->Finish();
  std::error_code ec;
  std::filesystem::remove_all(job_dir, ec);
  if (lease_lost && result.state() == pb::JOB_STATE_UNSPECIFIED) {
    return absl::AbortedError("lease lost; the server re-queues the job");
  }
  return FromGrpcStatus(fin, "reporting the result");
}

}  // namespace ft::worker
