#ifndef FT_WORKER_AGENT_AGENT_H_
#define FT_WORKER_AGENT_AGENT_H_

#include <atomic>
#include <memory>
#include <string>

#include <torch/types.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "finetune/v1/worker.grpc.pb.h"
#include "worker/agent/dataset_cache.h"

namespace ft::worker {

namespace pb = ::finetune::v1;
class DeviceMemory;
class JobSession;
class WorkerMetrics;
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
};

// The worker's lease loop: lease a job, run it in a JobSession (which
// streams its events and heartbeats), upload the model, report the result;
// repeat. A lost lease or a cancellation stops the job at the next step.
class Agent {
 public:
  explicit Agent(const AgentOptions& options);
  ~Agent();
  // Runs until Stop() or the parent exits. Returns an error only when the
  // server is unusable (e.g. the address is malformed).
  absl::Status Run();
  // Thread-safe; the current job stops at its next step.
  void Stop() { stopping_ = true; }

 private:
  // One leased job: fetch its dataset, train, export and upload, report.
  absl::Status RunOne(const pb::LeaseJobResponse& lease);
  // The trainer's hooks: events go to `session` (which must outlive them),
  // fetched models to `job_dir`.
  TrainerHooks HooksFor(JobSession* session, const std::string& job_dir);
  // Makes the dataset readable here, then trains.
  absl::StatusOr<TrainResult> TrainJob(const pb::LeaseJobResponse& lease, const TrainerHooks& hooks);
  // The result of a job whose lease held: FAILED with the trainer's reason,
  // CANCELLED, or, once the model is exported and uploaded, SUCCEEDED.
  pb::JobResult Conclude(const absl::StatusOr<TrainResult>& trained, const pb::Lease& lease,
                         const std::string& job_dir, const TrainerHooks& hooks);
  bool ParentGone() const;

  AgentOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::WorkerGateway::Stub> stub_;
  std::unique_ptr<DatasetCache> datasets_;
  // Set with a CUDA device, metrics and a usable NVML; read by Run()'s sampler.
  std::unique_ptr<DeviceMemory> device_memory_;
  std::atomic<bool> stopping_{false};
};

}  // namespace ft::worker

#endif  // FT_WORKER_AGENT_AGENT_H_
