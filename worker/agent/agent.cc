#include "worker/agent/agent.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <thread>

#include <torch/script.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/grpc_status/grpc_status.h"
#include "common/transfer/transfer.h"
#include "grpcpp/grpcpp.h"
#include "common/util/files.h"
#include "common/util/log.h"
#include "common/util/sha256.h"
#include "common/util/status.h"
#include "worker/agent/device_memory.h"
#include "worker/agent/job_session.h"
#include "worker/agent/worker_metrics.h"
#include "worker/export/metadata.h"
#include "worker/export/model_card.h"
#include "worker/export/onnx_export.h"
#include "worker/export/torchscript.h"
#include "worker/train/checkpoint.h"
#include "worker/train/gang.h"
#include "worker/train/torch_process.h"
#include "worker/train/trainer.h"

namespace ft::worker {
namespace {

constexpr int kLeaseWaitSeconds = 5;
// NVML answers a memory query in well under a millisecond.
constexpr absl::Duration kDeviceMemoryInterval = absl::Seconds(5);
// A mid-epoch checkpoint that cannot be stored is skipped (the next one
// follows); training waits for it this long at most.
constexpr absl::Duration kMidEpochRetryFor = absl::Seconds(30);
// A preempted worker is killed soon (the local pool waits 10 s): its
// checkpoint and release wait this long for an unreachable server.
constexpr absl::Duration kPreemptedRetryFor = absl::Seconds(4);
// Failures that may pass but are not the server being away (a full disk,
// a corrupted transfer): tries in all.
constexpr int kTriesOnFailure = 3;
// Checkpoints that do not parse, passed over before starting afresh.
constexpr int kMaxCheckpointsTried = 8;
// A rank that finds its job already ended before it joined waits this long
// for rank 0's store to tell it why: rank 0 reports a failure of its own
// there before the server hears of it.
constexpr std::chrono::milliseconds kPeerReasonWait = std::chrono::seconds(15);

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

// The server is away (down, restarting, overloaded): the same call may
// succeed later.
bool ServerAway(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) || absl::IsAborted(s) || absl::IsCancelled(s);
}

// A failure that may pass on another try: a full disk, a corrupted transfer.
bool MayPass(const absl::Status& s) {
  return absl::IsResourceExhausted(s) || absl::IsInternal(s) || absl::IsDataLoss(s) || absl::IsUnknown(s);
}

// A call to the server, retried with backoff: while the server is away,
// until `away_for` has passed; other failures that may pass, kTriesOnFailure
// times in all; never once `stop` says so. The last status.
absl::Status WithRetries(const std::function<absl::Status()>& call, absl::Duration away_for,
                         const std::function<bool()>& stop, const std::string& what) {
  const absl::Time give_up = absl::Now() + away_for;
  absl::Duration backoff = absl::Milliseconds(500);
  int failures = 0;
  while (true) {
    const absl::Status s = call();
    if (s.ok()) return s;
    const bool away = ServerAway(s);
    if (!away && !(MayPass(s) && ++failures < kTriesOnFailure)) return s;
    if (away && absl::Now() + backoff > give_up) return s;
    if (stop && stop()) return s;
    util::Log("warning", "finetune-worker", absl::StrCat(what, " failed; trying again"),
              {{"error", std::string(s.message())}, {"in", absl::FormatDuration(backoff)}});
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
}

// Streams one file from the server into `path` through `reader` (whose
// call runs in `ctx`), checked against the size and sha256 of its first
// chunk; `first` sees that chunk.
template <typename Chunk>
absl::Status ReceiveInto(grpc::ClientContext& ctx, grpc::ClientReader<Chunk>& reader, const std::string& path,
                         const std::string& what, const std::function<void(const Chunk&)>& first = nullptr) {
  FT_ASSIGN_OR_RETURN(auto sink, transfer::FileSink::Create(path, what));
  return transfer::ReceiveFile<Chunk>(
      *sink,
      [&](Chunk* c) {
        if (!reader.Read(c)) return false;
        if (first && c->offset() == 0) first(*c);
        return true;
      },
      [&] { ctx.TryCancel(); }, [&] { return FromGrpcStatus(reader.Finish(), absl::StrCat("fetching ", what)); });
}

// Sends `header` and then the file of `source` through the client stream
// that `start` opens (UploadModel, UploadCheckpoint).
template <typename Chunk, typename Response, typename Start>
absl::Status SendWithHeader(const Start& start, const Chunk& header, transfer::FileSource& source,
                            const std::string& what, Response* response) {
  grpc::ClientContext ctx;
  auto writer = start(&ctx, response);
  // A failed write means the server has answered; Finish() says why.
  const absl::Status sent = transfer::UploadFile(*writer, header, source, what);
  return transfer::UploadOutcome(sent, FromGrpcStatus(writer->Finish(), what));
}

// Fetches stored model `model_id`'s model.pt into `job_dir`; returns its path.
absl::StatusOr<std::string> FetchModel(pb::WorkerGateway::Stub* stub, const std::string& job_dir,
                                       const std::string& model_id) {
  FT_RETURN_IF_ERROR(util::MakeDirs(job_dir));
  const std::string path = absl::StrCat(job_dir, "/source-", model_id, ".pt");
  grpc::ClientContext ctx;
  pb::FetchModelRequest req;
  req.set_model_id(model_id);
  auto reader = stub->FetchModel(&ctx, req);
  FT_RETURN_IF_ERROR(ReceiveInto<pb::ModelChunk>(ctx, *reader, path, absl::StrCat("model ", model_id)));
  return path;
}

// The files of an export that go to the server, from the job's folder:
// model.pt (required), then the model card and the ONNX file where the
// export wrote them. metadata.json travels in the upload's header.
constexpr const char* kOptionalModelFiles[] = {"README.md", "model.onnx"};

// Uploads the model in `dir` (model.pt and whichever kOptionalModelFiles
// exist), described by `metadata_json`, for `lease`; returns the id the
// server stored it under.
absl::StatusOr<std::string> UploadModel(pb::WorkerGateway::Stub* stub, const pb::Lease& lease,
                                        const std::string& dir, const std::string& metadata_json) {
  FT_ASSIGN_OR_RETURN(auto model, transfer::FileSource::Open(dir + "/model.pt"));
  std::vector<std::pair<std::string, std::unique_ptr<transfer::FileSource>>> extra;
  for (const char* name : kOptionalModelFiles) {
    const std::string path = absl::StrCat(dir, "/", name);
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) continue;
    FT_ASSIGN_OR_RETURN(auto source, transfer::FileSource::Open(path));
    extra.emplace_back(name, std::move(source));
  }
  pb::UploadModelChunk header;
  header.mutable_header()->set_lease_id(lease.lease_id());
  header.mutable_header()->set_job_id(lease.job_id());
  header.mutable_header()->set_metadata_json(metadata_json);
  header.mutable_header()->set_size_bytes(model->size());
  header.mutable_header()->set_sha256(model->sha256());
  pb::UploadModelResponse up;
  grpc::ClientContext ctx;
  auto writer = stub->UploadModel(&ctx, &up);
  const auto write_data = [&writer](int64_t, std::string data) {
    pb::UploadModelChunk chunk;
    chunk.set_data(std::move(data));
    return writer->Write(chunk);
  };
  // A failed write means the server has answered; Finish() says why.
  absl::Status sent = absl::UnavailableError("uploading the model: the receiver refused the header");
  if (writer->Write(header)) {
    sent = transfer::SendFile(*model, write_data, "uploading model.pt");
    for (auto& [name, source] : extra) {
      if (!sent.ok()) break;
      pb::UploadModelChunk start;
      start.mutable_file()->set_name(name);
      start.mutable_file()->set_size_bytes(source->size());
      start.mutable_file()->set_sha256(source->sha256());
      const std::string what = absl::StrCat("uploading ", name);
      sent = writer->Write(start) ? transfer::SendFile(*source, write_data, what)
                                  : absl::UnavailableError(absl::StrCat(what, ": the receiver went away"));
    }
  }
  writer->WritesDone();
  FT_RETURN_IF_ERROR(transfer::UploadOutcome(sent, FromGrpcStatus(writer->Finish(), "uploading the model")));
  return up.model_id();
}

// Uploads the checkpoint file at `path` (of digest `sha256`), at `at`, for
// `lease`; returns its number in the job.
absl::StatusOr<int64_t> UploadCheckpoint(pb::WorkerGateway::Stub* stub, const pb::Lease& lease,
                                         const std::string& path, const std::string& sha256,
                                         const CheckpointPosition& at) {
  FT_ASSIGN_OR_RETURN(auto source, transfer::FileSource::Open(path, sha256));
  pb::UploadCheckpointChunk chunk;
  pb::CheckpointHeader* header = chunk.mutable_header();
  header->set_lease_id(lease.lease_id());
  header->set_job_id(lease.job_id());
  header->set_epoch(at.epoch);
  header->set_step(at.step);
  header->set_epoch_end(at.epoch_end);
  header->set_size_bytes(source->size());
  header->set_sha256(source->sha256());
  pb::UploadCheckpointResponse stored;
  FT_RETURN_IF_ERROR(SendWithHeader(
      [stub](grpc::ClientContext* ctx, pb::UploadCheckpointResponse* r) { return stub->UploadCheckpoint(ctx, r); },
      chunk, *source, "uploading the checkpoint", &stored));
  return stored.number();
}

struct FetchedCheckpoint {
  pb::CheckpointHeader header;  // number, epoch, step (from its first chunk)
  std::string bytes;
};

// The job's newest usable checkpoint numbered below `before` (any, when 0),
// through <job_dir>/checkpoint, into `fetched`; its header is set as soon
// as its first chunk arrives, also when the transfer then fails. NOT_FOUND
// when there is none.
absl::Status FetchCheckpoint(pb::WorkerGateway::Stub* stub, const pb::Lease& lease, const std::string& job_dir,
                             int64_t before, FetchedCheckpoint* fetched) {
  FT_RETURN_IF_ERROR(util::MakeDirs(job_dir));
  const std::string path = job_dir + "/checkpoint";
  grpc::ClientContext ctx;
  pb::FetchCheckpointRequest req;
  req.set_lease_id(lease.lease_id());
  req.set_job_id(lease.job_id());
  req.set_before(before);
  auto reader = stub->FetchCheckpoint(&ctx, req);
  FT_RETURN_IF_ERROR(ReceiveInto<pb::CheckpointChunk>(
      ctx, *reader, path, absl::StrCat("the checkpoint of job ", lease.job_id()),
      [fetched](const pb::CheckpointChunk& c) { fetched->header = c.header(); }));
  FT_ASSIGN_OR_RETURN(fetched->bytes, util::ReadFile(path));
  std::remove(path.c_str());
  return absl::OkStatus();
}

// Scratch bytes for an upload: no fsync, as the file lives only until sent.
absl::Status WriteScratchFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path, " (", bytes.size(), " bytes)"));
  return absl::OkStatus();
}

// A port of [lo, hi] that nothing listens on now, tried from a point that
// differs between processes (so that workers of one machine offer
// different ones); 0 when all are taken.
int FreePortIn(int lo, int hi) {
  if (lo <= 0 || hi < lo) return 0;
  const int span = hi - lo + 1;
  const int start = static_cast<int>((static_cast<uint64_t>(::getpid()) * 2654435761ULL +
                                      static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()))) %
                                     static_cast<uint64_t>(span));
  for (int i = 0; i < span; ++i) {
    const int port = lo + (start + i) % span;
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    const bool free = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(fd);
    if (free) return port;
  }
  return 0;
}

std::string Describe(const pb::CheckpointHeader& h) {
  return absl::StrCat("checkpoint ", h.number(), " (epoch ", h.epoch(), ", step ", h.step(), ")");
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

Agent::~Agent() {
  closing_ = true;
  notices_.clear();  // each waits for its thread, which now ends
}

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
  while (!stopping_ && !preempting_ && !ParentGone()) {
    pb::LeaseJobRequest request;
    request.mutable_worker()->set_worker_id(options_.worker_id);
    request.mutable_worker()->set_device(options_.device.str());
    request.mutable_worker()->set_threads(options_.threads);
    char host[256] = {0};
    ::gethostname(host, sizeof(host) - 1);
    request.mutable_worker()->set_hostname(host);
    if (!options_.c10d_host.empty()) {
      // Where this worker would open a multi-worker job's rendezvous.
      if (const int port = FreePortIn(options_.c10d_port_min, options_.c10d_port_max); port > 0) {
        request.mutable_worker()->set_c10d_host(options_.c10d_host);
        request.mutable_worker()->set_c10d_port(port);
      }
    }
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
    absl::Status run = response.lease().rank() > 0 ? RunRank(response) : RunOne(response);
    if (!run.ok()) {
      std::cerr << "finetune-worker: job " << response.lease().job_id() << ": " << run.message() << std::endl;
    }
    if (options_.max_jobs > 0 && ++jobs >= options_.max_jobs) break;
  }
  return absl::OkStatus();
}

struct Agent::RunningJob {
  JobSession* session;  // not owned; null on a rank other than 0
  pb::Lease lease;
  std::string dir;
  // The server answered UNIMPLEMENTED: it keeps no checkpoints.
  bool no_checkpoints = false;
  // A checkpoint was still on its way when the worker was preempted, and was
  // given up: the job is released, not failed.
  bool abandoned_for_preemption = false;
};

bool Agent::Abandoned(const RunningJob& job) const {
  return (job.session != nullptr && job.session->lease_lost()) || stopping_ || ParentGone();
}

TrainerHooks Agent::HooksFor(RunningJob* job) {
  JobSession* session = job->session;
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
  hooks.preempted = [this] { return preempting_.load(); };
  hooks.save_checkpoint = [this, job](const CheckpointPosition& at, const std::string& bytes) {
    return StoreCheckpoint(job, at, bytes);
  };
  hooks.fetch_model = [this, dir = job->dir](const std::string& model_id) {
    return FetchModel(stub_.get(), dir, model_id);
  };
  return hooks;
}

absl::Status Agent::StoreCheckpoint(RunningJob* job, const CheckpointPosition& at, const std::string& bytes) {
  if (job->no_checkpoints) return absl::OkStatus();
  FT_RETURN_IF_ERROR(util::MakeDirs(job->dir));
  const std::string path = job->dir + "/checkpoint.upload";
  FT_RETURN_IF_ERROR(WriteScratchFile(path, bytes));
  const std::string sha256 = util::Sha256Hex(bytes);
  const bool for_preemption = preempting_;
  const absl::Duration away_for = for_preemption ? kPreemptedRetryFor
                                  : at.epoch_end ? options_.retry_for
                                                 : kMidEpochRetryFor;
  int64_t number = 0;
  const absl::Status stored = WithRetries(
      [&] {
        auto n = UploadCheckpoint(stub_.get(), job->lease, path, sha256, at);
        if (n.ok()) number = *n;
        return n.status();
      },
      away_for, [this, job, for_preemption] { return Abandoned(*job) || (preempting_ && !for_preemption); },
      "uploading the checkpoint");
  std::remove(path.c_str());
  if (!stored.ok() && preempting_) job->abandoned_for_preemption = true;
  if (absl::IsUnimplemented(stored)) {
    // An older server: the job runs as before, without resume.
    job->no_checkpoints = true;
    pb::JobEvent e;
    e.mutable_log()->set_level("warning");
    e.mutable_log()->set_message(absl::StrCat("the server stores no checkpoints (", stored.message(),
                                              "): this job starts again from the beginning if interrupted"));
    job->session->SendEvent(std::move(e));
    return absl::OkStatus();
  }
  if (absl::IsFailedPrecondition(stored) || absl::IsNotFound(stored)) job->session->MarkLeaseLost();
  if (!stored.ok()) return stored;
  util::Log("info", "finetune-worker", "checkpoint stored",
            {{"job_id", job->lease.job_id()}, {"number", absl::StrCat(number)}, {"epoch", absl::StrCat(at.epoch)},
             {"step", absl::StrCat(at.step)}, {"epoch_end", at.epoch_end ? "true" : "false"},
             {"bytes", absl::StrCat(bytes.size())}});
  return absl::OkStatus();
}

absl::StatusOr<std::string> Agent::LatestCheckpoint(RunningJob* job, const TrainerHooks& hooks) {
  int64_t before = 0;
  for (int tried = 0; tried < kMaxCheckpointsTried; ++tried) {
    FetchedCheckpoint fetched;
    const absl::Status got = WithRetries(
        [&] {
          fetched = FetchedCheckpoint();
          return FetchCheckpoint(stub_.get(), job->lease, job->dir, before, &fetched);
        },
        options_.retry_for, [&hooks] { return hooks.cancelled() || hooks.preempted(); }, "fetching the checkpoint");
    // None (before `before`), or a server that keeps none.
    if (absl::IsNotFound(got) || absl::IsUnimplemented(got)) break;
    if (absl::IsFailedPrecondition(got) && job->session != nullptr) job->session->MarkLeaseLost();
    std::string why;
    if (got.ok()) {
      const absl::StatusOr<CheckpointInfo> info = InspectCheckpoint(fetched.bytes);
      if (info.ok()) return std::move(fetched.bytes);
      why = std::string(info.status().message());
    } else if (absl::IsDataLoss(got) && fetched.header.number() > 0) {
      // It kept arriving damaged.
      why = std::string(got.message());
    } else {
      return got;
    }
    const int64_t number = fetched.header.number();
    hooks.on_log("warning", absl::StrCat(Describe(fetched.header), " cannot be used: ", why,
                                         number > 1 ? "; trying the one before" : ""));
    if (number <= 1) break;
    before = number;
  }
  if (before > 0) hooks.on_log("warning", "no usable checkpoint: the job starts from the beginning");
  return std::string();
}

absl::StatusOr<TrainResult> Agent::TrainJob(const pb::LeaseJobResponse& lease, RunningJob* job,
                                            const TrainerHooks& hooks) {
  TrainerOptions trainer_options;
  trainer_options.device = options_.device;
  trainer_options.job_id = lease.lease().job_id();
  trainer_options.loader_threads = std::max(1, options_.threads / 2);
  trainer_options.decode_cache_bytes = options_.decode_cache_bytes;
  trainer_options.work_dir = job->dir;
  auto stopped = [&hooks] {
    TrainResult result;
    result.cancelled = hooks.cancelled();
    result.preempted = !result.cancelled;
    return result;
  };
  const std::function<bool()> stop = [&hooks] { return hooks.cancelled() || hooks.preempted(); };
  const pb::Gang& group = lease.lease().gang();
  absl::StatusOr<GangOptions> gang_options = GangOptionsFor(lease.lease(), stop);
  // A rank of a multi-worker job that fails before it joins tells the
  // others, who would otherwise wait for it until the timeout.
  const auto failed_before_joining = [&](const absl::Status& status) {
    if (group.world_size() > 1 && gang_options.ok()) {
      if (lease.lease().rank() > 0 && (absl::IsFailedPrecondition(status) || absl::IsNotFound(status))) {
        // The job ended on the server before this rank joined (the shared
        // lease is gone): most often rank 0 failed it, and said why in its
        // store, which it keeps open for a while for the others.
        GangOptions probe = *gang_options;
        probe.timeout = std::min<std::chrono::milliseconds>(probe.timeout, kPeerReasonWait);
        std::optional<absl::Status> why = Gang::PeerFailureBeforeJoining(probe);
        if (!why.has_value()) return status;
        hooks.on_log("warning",
                     absl::StrCat("rank ", lease.lease().rank(), " stops before joining: ", why->message()));
        return *why;
      }
      hooks.on_log("warning", absl::StrCat("rank ", lease.lease().rank(), " cannot train: ", status.message(),
                                           "; telling the group at ", group.master_address()));
      if (lease.lease().rank() == 0) {
        // Rank 0's store stays open for the others after the job has ended
        // here, while this worker takes other work.
        GangOptions notice = *gang_options;
        notice.stopped = [this] { return closing_.load() || ParentGone(); };
        notices_.erase(std::remove_if(notices_.begin(), notices_.end(),
                                      [](const std::future<void>& f) {
                                        return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
                                      }),
                       notices_.end());
        notices_.push_back(std::async(std::launch::async, [notice, status] {
          Gang::ReportBeforeJoining(notice, status);
        }));
      } else {
        Gang::ReportBeforeJoining(*gang_options, status);
      }
    }
    return status;
  };
  // Uploaded and archived datasets are fetched (or found cached) first.
  auto prepared = datasets_->Prepare(
      lease.job(), [&](const std::string& message) { hooks.on_log("info", message); }, stop);
  if (absl::IsCancelled(prepared.status())) return stopped();
  if (!prepared.ok()) return failed_before_joining(prepared.status());
  absl::StatusOr<std::string> resume = LatestCheckpoint(job, hooks);
  if (stop()) return stopped();
  if (!resume.ok()) return failed_before_joining(resume.status());
  trainer_options.resume = *std::move(resume);
  // A multi-worker job: every rank meets at rank 0's rendezvous first.
  std::unique_ptr<Gang> gang;
  if (group.world_size() > 1) {
    FT_RETURN_IF_ERROR(gang_options.status());
    hooks.on_log("info", absl::StrCat("rank ", lease.lease().rank(), " of ", group.world_size(), " (",
                                      options_.worker_id, ") joining the group at ", group.master_address()));
    absl::StatusOr<std::unique_ptr<Gang>> joined = Gang::Join(*gang_options);
    if (stop()) return stopped();
    FT_RETURN_IF_ERROR(joined.status());
    gang = *std::move(joined);
    trainer_options.gang = gang.get();
  }
  util::Log("info", "finetune-worker", "job started",
            {{"job_id", lease.lease().job_id()}, {"worker_id", options_.worker_id},
             {"attempt", absl::StrCat(lease.lease().attempt())},
             {"rank", absl::StrCat(lease.lease().rank(), "/", std::max(1, group.world_size()))},
             {"resumed", trainer_options.resume.empty() ? "false" : "true"}});
  return RunTraining(*prepared, std::move(trainer_options), hooks);
}

absl::StatusOr<GangOptions> Agent::GangOptionsFor(const pb::Lease& lease, std::function<bool()> stopped) const {
  const std::string& master = lease.gang().master_address();
  const size_t colon = master.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(master.substr(colon + 1), &port) || port <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("the lease names no usable rendezvous: '", master, "'"));
  }
  GangOptions options;
  options.key_prefix = absl::StrCat(lease.lease_id(), "/", lease.attempt());
  options.worker_id = options_.worker_id;
  options.stopped = std::move(stopped);
  options.rank = lease.rank();
  options.world_size = lease.gang().world_size();
  options.master_host = master.substr(0, colon);
  options.master_port = port;
  options.host = options_.c10d_host.empty() ? "127.0.0.1" : options_.c10d_host;
  options.timeout = absl::ToChronoMilliseconds(options_.c10d_timeout);
  options.device = options_.device;
  return options;
}

namespace {

// model.onnx beside model.pt, or why not: an op the converter does not map
// costs the job its ONNX file, with a warning, never the job.
OnnxFacts ExportOnnxFile(const TrainResult& trained, const std::string& path, const TrainerHooks& hooks) {
  std::vector<std::string> notes;
  const absl::Status written = WriteOnnx(trained.model, trained.metadata.spec.image_size(), path, &notes);
  for (const std::string& note : notes) hooks.on_log("info", absl::StrCat("model.onnx: ", note));
  OnnxFacts facts;
  if (written.ok()) {
    facts.file = "model.onnx";
    facts.opset = kOnnxOpset;
    facts.converter = kOnnxConverterVersion;
    facts.verified_with = kOnnxVerifiedWith;
  } else {
    facts.error = std::string(written.message());
    hooks.on_log("warning", absl::StrCat(facts.error, "; the model is exported as model.pt only"));
  }
  return facts;
}

}  // namespace

pb::JobResult Agent::Conclude(const absl::StatusOr<TrainResult>& trained, RunningJob* job,
                              const TrainerHooks& hooks) {
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
  const std::string model_path = job->dir + "/model.pt";
  absl::Status saved = util::MakeDirs(job->dir);
  if (saved.ok()) saved = SaveTorchScript(trained->model, model_path);
  // The export's own facts (ONNX) join the metadata before metadata.json and
  // the model card are written from it.
  ModelMetadata metadata = trained->metadata;
  if (saved.ok()) metadata.onnx = ExportOnnxFile(*trained, job->dir + "/model.onnx", hooks);
  if (saved.ok()) saved = util::WriteFileAtomic(job->dir + "/README.md", ModelCard(metadata));
  const std::string metadata_json = MetadataJson(metadata);
  absl::StatusOr<std::string> model_id = std::string();
  if (!saved.ok()) model_id = saved;
  if (saved.ok()) {
    const absl::Status uploaded = WithRetries(
        [&] {
          model_id = UploadModel(stub_.get(), job->lease, job->dir, metadata_json);
          return model_id.status();
        },
        options_.retry_for, [this, job] { return Abandoned(*job); }, "uploading the model");
    if (absl::IsFailedPrecondition(uploaded) || absl::IsNotFound(uploaded)) {
      // The lease went while the model was on its way: nothing to report.
      job->session->MarkLeaseLost();
      return pb::JobResult();
    }
  }
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
                      JobSession::Start(stub_.get(), lease.lease(), options_.worker_id, options_.session));
  RunningJob job{session.get(), lease.lease(), absl::StrCat(options_.work_dir, "/", job_id)};
  pb::JobResult result;
  bool preempted = false;
  bool group_broke = false;
  {
    // What the job holds (its model, data, loaders and their threads) lives
    // in this scope, and is gone before the next job.
    const TrainerHooks hooks = HooksFor(&job);
    const absl::StatusOr<TrainResult> trained = TrainJob(lease, &job, hooks);
    preempted = trained.ok() ? trained->preempted : job.abandoned_for_preemption;
    // A multi-worker job whose group broke (a rank died or never came): not
    // the job's failure. Ending the stream without a result puts it back in
    // the queue at once (the attempt counts against --max-attempts), and the
    // next group resumes from its newest checkpoint.
    group_broke = lease.lease().gang().world_size() > 1 && !trained.ok() && absl::IsUnavailable(trained.status());
    if (group_broke) {
      hooks.on_log("warning", absl::StrCat(trained.status().message(),
                                           "; the job goes back to the queue, to resume on a new group of ",
                                           lease.lease().gang().world_size(), " workers from its newest checkpoint"));
    }
    // With the lease lost there is nothing to report: the server re-queues the job.
    if (!session->lease_lost() && !preempted && !group_broke) result = Conclude(trained, &job, hooks);
  }
  ReleaseCachedMemory(options_.device);
  std::string state = pb::JobState_Name(result.state());
  if (session->lease_lost()) {
    state = "LEASE_LOST";
  } else if (group_broke) {
    state = "GROUP_BROKEN";
  } else if (preempted) {
    // Given back: the server queues it again, to resume from its checkpoint.
    state = session->SendRelease("preempted", kPreemptedRetryFor) ? "RELEASED" : "RELEASE_NOT_SENT";
  }
  util::Log(result.state() == pb::FAILED ? "warning" : "info", "finetune-worker", "job ended",
            {{"job_id", job_id}, {"state", state}, {"error", result.error()}});
  if (result.state() != pb::JOB_STATE_UNSPECIFIED && !session->lease_lost()) {
    // A local worker whose server is gone does not wait for it.
    session->SendResult(result, ParentGone() ? absl::ZeroDuration() : options_.retry_for);
  }
  const absl::Status finished = session->Finish();
  std::error_code ec;
  std::filesystem::remove_all(job.dir, ec);
  if (session->lease_lost() && result.state() == pb::JOB_STATE_UNSPECIFIED) {
    return absl::AbortedError("lease lost; the server re-queues the job");
  }
  return finished;
}

}  // namespace ft::worker

namespace ft::worker {

absl::Status Agent::RunRank(const pb::LeaseJobResponse& lease) {
  const pb::Lease& l = lease.lease();
  const std::string& job_id = l.job_id();
  const std::string rank = absl::StrCat(l.rank(), "/", l.gang().world_size());
  RunningJob job{nullptr, l, absl::StrCat(options_.work_dir, "/", job_id, "-rank", l.rank())};
  std::string state;
  absl::Status outcome;
  {
    // Rank 0 reports; this rank's words go to its own log.
    TrainerHooks hooks;
    hooks.on_log = [job_id, rank](const std::string& level, const std::string& message) {
      util::Log(level, "finetune-worker", message, {{"job_id", job_id}, {"rank", rank}});
    };
    if (options_.metrics != nullptr) {
      hooks.on_step = [this](double seconds, int64_t images) { options_.metrics->OnStep(seconds, images); };
    }
    hooks.cancelled = [this] { return stopping_ || ParentGone(); };
    hooks.preempted = [this] { return preempting_.load(); };
    hooks.fetch_model = [this, dir = job.dir](const std::string& model_id) {
      return FetchModel(stub_.get(), dir, model_id);
    };
    const absl::StatusOr<TrainResult> trained = TrainJob(lease, &job, hooks);
    if (!trained.ok()) {
      state = absl::IsUnavailable(trained.status()) ? "GROUP_BROKEN" : "FAILED";
      outcome = trained.status();
    } else {
      state = trained->cancelled ? "CANCELLED" : trained->preempted ? "STOPPED" : "TRAINED";
    }
  }
  ReleaseCachedMemory(options_.device);
  util::Log(outcome.ok() ? "info" : "warning", "finetune-worker", "rank ended",
            {{"job_id", job_id}, {"rank", rank}, {"state", state}, {"error", std::string(outcome.message())}});
  std::error_code ec;
  std::filesystem::remove_all(job.dir, ec);
  return outcome;
}

}  // namespace ft::worker
