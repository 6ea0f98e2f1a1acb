#ifndef FT_SERVER_JOBS_JOB_MANAGER_H_
#define FT_SERVER_JOBS_JOB_MANAGER_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/util/clock.h"
#include "server/checkpoints/checkpoint_store.h"
#include "server/datasets/dataset_store.h"
#include "server/events/event_hub.h"
#include "server/jobs/job_store.h"
#include "server/models/model_store.h"

namespace ft::server {

struct JobManagerOptions {
  // The only places file:// datasets and weights may be read from.
  std::vector<std::string> dataset_roots;
  // Uploaded datasets (dataset://) and the cache of file:// archives. Not
  // owned; null refuses both with FAILED_PRECONDITION.
  datasets::DatasetStore* dataset_store = nullptr;
  // Where `pretrained` weights are looked up first, then
  // $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints).
  std::string weights_dir;
  // How long a lease lives without a heartbeat.
  absl::Duration lease_ttl = absl::Seconds(30);
  // A job whose worker is lost this many times fails.
  int max_attempts = 3;
  // How often expired leases are swept.
  absl::Duration sweep_interval = absl::Seconds(1);
  // Not owned; the real clock when null. The store should share it.
  util::Clock* clock = nullptr;
  // The running jobs' checkpoints. Not owned; null keeps none (workers then
  // start every attempt from the beginning).
  CheckpointStore* checkpoints = nullptr;
};

// Who submits or validates a job, as far as the core cares: the tenant the
// job will belong to (model:// and dataset:// resolve only in it) and that
// tenant's limits, taken from the caller's identity. The default value is
// the caller without --auth-file: tenant "default", the server's roots, no
// quotas.
struct Submitter {
  std::string tenant;  // empty: the default tenant
  // When non-empty, file:// datasets and weights may come only from these,
  // instead of the server's --dataset-roots.
  std::vector<std::string> dataset_roots;
  // QUEUED plus RUNNING jobs of the tenant; unset is unlimited.
  std::optional<int64_t> max_queued_jobs;
  // Bytes of the tenant's models and uploaded dataset archives; unset is
  // unlimited. A job is refused while the tenant is at or over it, since it
  // would add a model.
  std::optional<int64_t> max_storage_bytes;
};

// Told of job lifecycle moments, for metrics. Implementations are
// thread-safe and quick; they are called outside the manager's locks.
class JobObserver {
 public:
  virtual ~JobObserver() = default;
  // `tenant`: the job's, never empty. Tenants come from --auth-file's
  // identities, so they are few enough to be a metric label.
  virtual void OnSubmitted(const std::string& tenant) = 0;
  // A job's first lease, `queue_wait` after it was submitted.
  virtual void OnLeased(absl::Duration queue_wait) = 0;
  virtual void OnFinished(pb::JobState state, absl::Duration duration, int64_t trained_images,
                          const std::string& tenant) = 0;
  virtual void OnLeaseExpired() = 0;
};

// The service core, knowing nothing of gRPC: validates and queues jobs,
// hands them to workers, records their events and results. Thread-safe.
// Owns the lease-sweeper thread; Shutdown() (or the destructor) joins it.
class JobManager {
 public:
  // `store`, `hub` and `models` are not owned and must outlive the manager.
  JobManager(const JobManagerOptions& options, JobStore* store, EventHub* hub,
             FilesystemModelStore* models);
  ~JobManager();
  JobManager(const JobManager&) = delete;
  JobManager& operator=(const JobManager&) = delete;

  void Start();
  void Shutdown();

  // Pre-flight validation, then queueing. Errors as in DESIGN.md: malformed
  // fields INVALID_ARGUMENT naming the field, missing data or weights
  // NOT_FOUND, outside the roots PERMISSION_DENIED, untrainable data
  // FAILED_PRECONDITION.
  // Past the submitter's quotas RESOURCE_EXHAUSTED, with the numbers.
  absl::StatusOr<pb::Job> Submit(const pb::JobSpec& spec, const std::string& request_id,
                                 const Submitter& submitter);
  // Validation alone: the ResolvedJob a worker would get.
  absl::StatusOr<pb::ResolvedJob> Resolve(const pb::JobSpec& spec, const Submitter& submitter);
  // Any tenant's job; tenant checks are the caller's.
  absl::StatusOr<pb::Job> Get(const std::string& job_id);
  // An empty `tenant` means every tenant. Without the thumbnails of the
  // jobs' misclassified images (Get has them).
  absl::StatusOr<std::vector<pb::Job>> List(const std::vector<pb::JobState>& states, int limit,
                                            const std::string& tenant);
  // Bytes the tenant stores: its models and uploaded dataset archives.
  int64_t TenantStorageBytes(const std::string& tenant);
  absl::StatusOr<pb::Job> Cancel(const std::string& job_id);

  // Waits up to `wait` for a queued job and leases it to `worker`.
  absl::StatusOr<std::optional<LeasedJob>> Lease(const pb::WorkerInfo& worker,
                                                 absl::Duration wait);
  // Renews the lease; the returned job says whether cancellation was asked.
  absl::StatusOr<pb::Job> Heartbeat(const std::string& job_id, const std::string& lease_id);
  absl::Status RecordEvent(const std::string& job_id, const std::string& lease_id,
                           pb::JobEvent event);
  absl::StatusOr<pb::Job> Finish(const std::string& job_id, const std::string& lease_id,
                                 const pb::JobResult& result);
  // The worker's stream ended without a result: the job goes back to the
  // queue now rather than when the lease would have expired.
  void ReleaseLease(const std::string& job_id, const std::string& lease_id);
  // The worker gave the job back unfinished (preempted): QUEUED at once,
  // without using up an attempt; the next attempt resumes from the newest
  // checkpoint.
  absl::StatusOr<pb::Job> ReturnJob(const std::string& job_id, const std::string& lease_id,
                                    const std::string& reason);
  absl::Status CheckLease(const std::string& job_id, const std::string& lease_id);

  // Not owned; set before Start(), or null.
  void SetObserver(JobObserver* observer) { observer_ = observer; }
  struct WorkerCounts {
    int idle = 0;
    int busy = 0;
  };
  // Workers that asked for work or heart-beat in the last 30 s: busy when
  // that was a job's heartbeat (for every rank of a multi-worker job: rank
  // 0 beats for the group) or a lease they got, idle when they asked for
  // work and got none.
  WorkerCounts Workers();
  // Re-queues (or fails, past max_attempts) the jobs whose leases have
  // expired; the sweeper thread calls it every sweep_interval.
  void Sweep();

  JobStore* store() { return store_; }
  EventHub* hub() { return hub_; }
  FilesystemModelStore* models() { return models_; }
  datasets::DatasetStore* dataset_store() { return options_.dataset_store; }
  CheckpointStore* checkpoints() { return options_.checkpoints; }

 private:
  void SweepLoop();
  void WakeLeasers();
  void SeenWorker(const std::string& worker_id, bool busy);
  // Logs, tells the observer, and frees what only a running job needs.
  void ReportFinished(const pb::Job& job);

  JobManagerOptions options_;
  util::RealClock real_clock_;
  util::Clock* clock_;
  JobStore* store_;
  EventHub* hub_;
  FilesystemModelStore* models_;
  JobObserver* observer_ = nullptr;

  // Serialises the quota check with the insert, so that two concurrent
  // submits cannot both take the tenant's last place.
  absl::Mutex submit_mu_;
  absl::Mutex mu_;
  struct SeenAs {
    absl::Time when;
    bool busy = false;
  };
  std::map<std::string, SeenAs> workers_seen_ ABSL_GUARDED_BY(mu_);
  int64_t queue_generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread sweeper_;
};

}  // namespace ft::server

#endif  // FT_SERVER_JOBS_JOB_MANAGER_H_
