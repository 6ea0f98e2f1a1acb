#ifndef FT_WORKER_AGENT_AGENT_H_
#define FT_WORKER_AGENT_AGENT_H_

#include <atomic>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "finetune/v1/worker.grpc.pb.h"
#include "worker/agent/dataset_cache.h"
#include "worker/agent/job_session.h"

namespace ft::worker {

namespace pb = ::finetune::v1;
class DeviceMemory;
class Gang;
class WorkerMetrics;
struct GangOptions;
struct CheckpointPosition;
struct TrainerHooks;
struct TrainResult;

struct AgentOptions {
  std::string server_address;
  // The channel to server_address (TLS, token: credentials.h); null dials
  // it in plaintext without a token.
  std::shared_ptr<grpc::Channel> channel;
  std::string worker_id;
  torch::Device device = torch::kCPU;
  int threads = 1;
  // Decoded images kept in memory per job, at most (see TrainerOptions).
  int64_t decode_cache_bytes = int64_t{4096} << 20;
  std::string work_dir;
  // Exit when this process is gone (local workers watch their server); 0 = never.
  int parent_pid = 0;
  // Stop after this many jobs; 0 = run forever.
  int max_jobs = 0;
  // Not owned; may be null.
  WorkerMetrics* metrics = nullptr;
  // Datasets with a digest: auto (the server's copy when readable here, else
  // fetch into <work_dir>/datasets) or always (fetch); see DatasetCache.
  std::string fetch_datasets = "auto";
  // The job's stream: heartbeats, and reconnecting while the server is down.
  JobSessionOptions session;
  // How long an upload or fetch is retried while the server is unreachable
  // (UNAVAILABLE): an epoch end's checkpoint and the model, and the
  // checkpoint a job resumes from. Mid-epoch checkpoints wait less, and a
  // preempted worker's much less.
  absl::Duration retry_for = absl::Minutes(10);
  // Multi-worker jobs (c10d): the address this worker's peers reach it at,
  // and the ports it may open the group's rendezvous on as rank 0 (the
  // first free one is offered with every lease request). An empty host
  // leaves the worker to single-worker jobs.
  std::string c10d_host;
  int c10d_port_min = 29500;
  int c10d_port_max = 29599;
  // How long a gang waits for its ranks to join, and then for any one
  // collective, before the attempt counts as broken.
  absl::Duration c10d_timeout = absl::Minutes(10);
};

// The worker's lease loop: lease a job, run it in a JobSession (which
// streams its events and heartbeats), resume it from its newest usable
// checkpoint, upload its checkpoints and then the model, report the result;
// repeat. A lost lease or a cancellation stops the job at the next step; a
// preemption checkpoints it there and gives it back.
class Agent {
 public:
  explicit Agent(const AgentOptions& options);
  ~Agent();
  // Runs until Stop(), Preempt() or the parent exits. Returns an error only
  // when the server is unusable (e.g. the address is malformed).
  absl::Status Run();
  // The current job stops at its next step as CANCELLED (SIGINT).
  // Async-signal-safe.
  void Stop() { stopping_ = true; }
  // SIGTERM: the current job finishes its step, checkpoints, uploads that
  // checkpoint and is released as "preempted" (the server queues it again);
  // then Run() returns. Async-signal-safe.
  void Preempt() { preempting_ = true; }

 private:
  // A leased job, as its hooks see it.
  struct RunningJob;

  // One leased job: fetch its dataset and newest checkpoint, train, export
  // and upload, report (or release).
  absl::Status RunOne(const pb::LeaseJobResponse& lease);
  // A rank other than 0 of a multi-worker job: no stream, no checkpoints,
  // no model; it fetches what rank 0 does, joins the group, trains its
  // share, and stops when the group does (or breaks).
  absl::Status RunRank(const pb::LeaseJobResponse& lease);
  // This worker's settings for the lease's group (Gang::Join); `stopped`
  // ends the wait for the others. INVALID_ARGUMENT when the lease names no
  // usable rendezvous.
  absl::StatusOr<GangOptions> GangOptionsFor(const pb::Lease& lease, std::function<bool()> stopped) const;
  // The trainer's hooks: events go to the job's session, fetched models to
  // its folder, checkpoints to the server. `job` must outlive them.
  TrainerHooks HooksFor(RunningJob* job);
  // Makes the dataset readable here, fetches the checkpoint to resume from,
  // then trains.
  absl::StatusOr<TrainResult> TrainJob(const pb::LeaseJobResponse& lease, RunningJob* job,
                                       const TrainerHooks& hooks);
  // The bytes of the job's newest checkpoint that parses ("" when it has
  // none, or the server keeps none): each one that does not is named in a
  // warning event and the one before it is fetched. FAILED_PRECONDITION
  // when the lease is gone; the server's errors that do not pass.
  absl::StatusOr<std::string> LatestCheckpoint(RunningJob* job, const TrainerHooks& hooks);
  // TrainerHooks::save_checkpoint: uploads `bytes`, retried with backoff.
  // OK with one warning event when the server keeps no checkpoints
  // (UNIMPLEMENTED: an older server).
  absl::Status StoreCheckpoint(RunningJob* job, const CheckpointPosition& at, const std::string& bytes);
  // The result of a job whose lease held: FAILED with the trainer's reason,
  // CANCELLED, or, once the model is exported and uploaded, SUCCEEDED;
  // nothing (JOB_STATE_UNSPECIFIED) when the upload finds the lease gone.
  pb::JobResult Conclude(const absl::StatusOr<TrainResult>& trained, RunningJob* job, const TrainerHooks& hooks);
  bool ParentGone() const;
  // Retrying a call for `job` is pointless: its lease is lost, the job is
  // being cancelled, or the server that spawned this worker is gone.
  bool Abandoned(const RunningJob& job) const;

  AgentOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::WorkerGateway::Stub> stub_;
  std::unique_ptr<DatasetCache> datasets_;
  // Set with a CUDA device, metrics and a usable NVML; read by Run()'s sampler.
  std::unique_ptr<DeviceMemory> device_memory_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> preempting_{false};
  // Set as the agent is destroyed: ends what notices_ wait for.
  std::atomic<bool> closing_{false};
  // Rank 0's stores, each held open by a thread of its own after rank 0
  // failed before its group formed, until the other ranks have read why
  // (Gang::ReportBeforeJoining). Touched by Run()'s thread only.
  std::vector<std::future<void>> notices_;
};

}  // namespace ft::worker

#endif  // FT_WORKER_AGENT_AGENT_H_
