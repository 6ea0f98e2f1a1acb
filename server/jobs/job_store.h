#ifndef FT_SERVER_JOBS_JOB_STORE_H_
#define FT_SERVER_JOBS_JOB_STORE_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "finetune/v1/finetune.pb.h"
#include "finetune/v1/worker.pb.h"

namespace ft::server {

namespace pb = ::finetune::v1;

// A job leased to a worker.
struct LeasedJob {
  pb::Lease lease;
  pb::ResolvedJob job;
};

// A job whose lease ran out, and what became of it.
struct ExpiredLease {
  std::string job_id;
  pb::JobState new_state;
};

// Durable state of every job: the queue (priority, then FIFO), leases, and
// each job's numbered event log. Every state change appends its
// StateChanged event in the same transaction, so the log and the job never
// disagree.
//
// Implementations are thread-safe. Errors: NOT_FOUND for an unknown job,
// FAILED_PRECONDITION for a lease that is no longer valid, UNAVAILABLE when
// a database server cannot be reached, INTERNAL for another storage failure.
class JobStore {
 public:
  virtual ~JobStore() = default;

  // Queues a new job. If `request_id` is non-empty and a job was already
  // created with it, returns that job instead.
  virtual absl::StatusOr<pb::Job> CreateJob(const pb::ResolvedJob& job,
                                            const std::string& request_id) = 0;
  virtual absl::StatusOr<pb::Job> GetJob(const std::string& job_id) = 0;
  // Newest first. An empty `states` means every state, an empty `tenant`
  // every tenant.
  virtual absl::StatusOr<std::vector<pb::Job>> ListJobs(const std::vector<pb::JobState>& states, int limit,
                                                        const std::string& tenant) = 0;
  // Number of queued jobs ahead of and including `job_id`; 0 if not queued.
  virtual absl::StatusOr<int> QueuePosition(const std::string& job_id) = 0;
  virtual absl::StatusOr<int> CountInState(pb::JobState state) = 0;
  // The tenant's jobs that hold a place: QUEUED or RUNNING (its quota).
  virtual absl::StatusOr<int> CountActive(const std::string& tenant) = 0;

  // Where a job resumes: the epoch and step of its newest checkpoint, 0 and
  // 0 when it has none. Called inside LeaseNext's transaction: must be quick
  // and must not call back into the store.
  struct ResumePoint {
    int32_t epoch = 0;
    int64_t step = 0;
  };
  using ResumePointFn = std::function<ResumePoint(const std::string& job_id)>;

  // Leases `worker` a job until now + ttl: the rank of a multi-worker job
  // that another worker's LeaseNext gave it, if any; else the first queued
  // job (priority, then FIFO) that fits, that is one needing a single
  // worker, or one needing N when N - 1 other workers of the same device
  // kind wait for work now (they get ranks 1..N-1, this worker rank 0; see
  // job_records.h, "Multi-worker jobs"). A job needing more is passed over
  // for the next one (backfill). Its RUNNING event carries
  // `resume_point(job)` when given. Until `waiting_until`, a worker that
  // can join a group (CanJoinGang) and got nothing counts as waiting.
  virtual absl::StatusOr<std::optional<LeasedJob>> LeaseNext(const pb::WorkerInfo& worker, absl::Duration ttl,
                                                             const ResumePointFn& resume_point = nullptr,
                                                             absl::Time waiting_until = absl::InfinitePast()) = 0;
  // `worker` stops waiting for work: the rank it was given meanwhile, if
  // any (to run), else nothing, and it no longer counts as waiting.
  virtual absl::StatusOr<std::optional<LeasedJob>> StopWaiting(const pb::WorkerInfo& worker, absl::Duration ttl) = 0;
  // Workers waiting for work now that could join a group, across every
  // process sharing the store.
  virtual absl::StatusOr<int> CountWaiting() = 0;
  // The workers the queued jobs need, summed (JobSpec.workers each): what
  // an autoscaler should provide.
  virtual absl::StatusOr<int64_t> QueuedWorkerDemand() = 0;
  // Extends a valid lease to now + ttl. Returns the job (for cancel_requested).
  virtual absl::StatusOr<pb::Job> RenewLease(const std::string& job_id,
                                             const std::string& lease_id,
                                             absl::Duration ttl) = 0;
  // Ends a leased job with the worker's result.
  virtual absl::StatusOr<pb::Job> FinishJob(const std::string& job_id,
                                            const std::string& lease_id,
                                            const pb::JobResult& result) = 0;
  // A queued job is cancelled at once; a running one is marked, and the
  // worker is told to stop. A finished job is returned unchanged.
  virtual absl::StatusOr<pb::Job> RequestCancel(const std::string& job_id) = 0;
  // Re-queues (or fails, after max_attempts, or cancels, if asked to) every
  // job whose lease expired before now.
  virtual absl::StatusOr<std::vector<ExpiredLease>> ExpireLeases(int max_attempts) = 0;
  // Makes a valid lease expire at once (its worker's stream broke); the next
  // ExpireLeases() re-queues the job.
  virtual absl::Status ReleaseLease(const std::string& job_id, const std::string& lease_id) = 0;
  // The worker gave a leased job back unfinished (it was preempted): QUEUED
  // again at once, and this attempt does not count against max_attempts. A
  // job whose cancel was asked ends CANCELLED instead.
  virtual absl::StatusOr<pb::Job> ReturnJob(const std::string& job_id, const std::string& lease_id,
                                            const std::string& reason) = 0;
  // Validates that `lease_id` currently holds `job_id`.
  virtual absl::Status CheckLease(const std::string& job_id, const std::string& lease_id) = 0;

  // Appends an event to a leased job's log, assigning sequence and time.
  virtual absl::StatusOr<pb::JobEvent> AppendEvent(const std::string& job_id,
                                                   const std::string& lease_id,
                                                   pb::JobEvent event) = 0;
  // Events with sequence >= from_sequence, in order, at most `limit`.
  virtual absl::StatusOr<std::vector<pb::JobEvent>> ReadEvents(const std::string& job_id,
                                                               int64_t from_sequence,
                                                               int limit) = 0;
  // The resolved spec of a job, as given to workers.
  virtual absl::StatusOr<pb::ResolvedJob> GetResolvedJob(const std::string& job_id) = 0;

  // Changes that other processes sharing the store make: with several
  // server replicas on one database, a job leased through replica A appends
  // its events there, and replica B's watchers must still hear of them.
  // `on_change(job_id, queued)` runs, on a thread of the store's, after a
  // transaction that changed the job (a new event, `queued` when the job
  // became QUEUED) committed, in this process or another. `on_resync()`
  // runs when changes may have been missed (the feed reconnected): every
  // job may have news. Both must be quick and must not call back into the
  // feed. A store that only one process uses has no feed: the default does
  // nothing, and the caller's own notifications are all there is.
  using ChangeFn = std::function<void(const std::string& job_id, bool queued)>;
  virtual absl::Status StartChangeFeed(ChangeFn on_change, std::function<void()> on_resync) {
    (void)on_change;
    (void)on_resync;
    return absl::OkStatus();
  }
  // Stops and joins the feed's thread; afterwards no callback runs.
  // Idempotent.
  virtual void StopChangeFeed() {}
};

bool IsTerminal(pb::JobState state);

}  // namespace ft::server

#endif  // FT_SERVER_JOBS_JOB_STORE_H_
