// What the two JobStore implementations (SqliteJobStore, PostgresJobStore)
// share: a job as its database row holds it, the StateChanged events and
// messages of each transition, and new ids. Keeping these in one place is
// what makes the backends behave the same; each store keeps only its SQL.
//
// Schema versions, the same on both backends: 1, the jobs and events tables;
// 2, jobs.tenant (and its index); 3, jobs.workers (how many a job needs at
// once) and jobs.gang (its current group, a serialised pb::Gang), and the
// waiting_workers table (see "Multi-worker jobs" below). PostgresJobStore records them in
// schema_migrations; SqliteJobStore has no version table and recognises
// version 1 by the missing column (SqliteJobStore::MigrateLocked).
#ifndef FT_SERVER_JOBS_JOB_RECORDS_H_
#define FT_SERVER_JOBS_JOB_RECORDS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/jobs/job_store.h"

namespace ft::server {

// The columns a job is read back with, in JobRow's order; both schemas name
// them alike.
inline constexpr char kJobColumns[] =
    "id, state, resolved, attempts, error, model_id, metrics, create_us, start_us, end_us, "
    "worker_id, cancel_requested, last_seq, tenant, gang";

// One row of the jobs table, as read with kJobColumns. Times are Unix
// microseconds from the store's clock, 0 for "not yet".
struct JobRow {
  std::string id;
  int64_t state = 0;
  std::string resolved;  // a serialised pb::ResolvedJob
  int64_t attempts = 0;
  std::string error;
  std::string model_id;
  std::string metrics;  // a serialised pb::JobMetrics, empty when none
  int64_t create_us = 0;
  int64_t start_us = 0;
  int64_t end_us = 0;
  std::string worker_id;
  bool cancel_requested = false;
  int64_t last_seq = 0;
  std::string tenant;
  std::string gang;  // a serialised pb::Gang; empty for one worker
};

// DATA_LOSS when the stored spec does not parse.
absl::StatusOr<pb::Job> JobFromRow(const JobRow& row);
absl::StatusOr<pb::ResolvedJob> ParseResolvedJob(const std::string& job_id, const std::string& bytes);

// NOT_FOUND, naming the job.
absl::Status NoSuchJob(const std::string& job_id);
// OK when a job in `state` whose lease is `holder` is held by `lease_id`;
// FAILED_PRECONDITION otherwise.
absl::Status CheckLeaseHolds(const std::string& job_id, const std::string& lease_id, int64_t state,
                             const std::string& holder);

// "<prefix><12 hex digits>", random: job and lease ids.
std::string NewStoreId(const char* prefix);

int64_t ToMicros(absl::Time t);

// `event` numbered `sequence` of `job_id`, stamped `now`.
void StampEvent(const std::string& job_id, int64_t sequence, absl::Time now, pb::JobEvent* event);

// The StateChanged event every transition appends.
pb::JobEvent StateChangedEvent(pb::JobState state, const std::string& message, int attempt,
                               const std::string& worker_id, const std::string& model_id,
                               const JobStore::ResumePoint& resumed = {});

// The lease LeaseNext hands out.
pb::Lease NewLease(const std::string& job_id, const std::string& lease_id, absl::Duration ttl, int attempt);

// Messages of the transitions.
std::string RunningMessage(const pb::WorkerInfo& worker, const JobStore::ResumePoint& resume);
std::string FinishedMessage(const pb::JobResult& result);
std::string ReturnedMessage(const std::string& worker_id, const std::string& reason);

// Multi-worker jobs. A worker that can join a group (it names a c10d
// host and port) is recorded in waiting_workers while its LeaseNext waits
// for work. The LeaseNext that picks a job needing N workers, when N - 1
// others wait, makes its own worker rank 0 and gives the others ranks
// 1..N-1 in their rows (the longest waiting first); each takes its rank at
// its next LeaseNext (or StopWaiting). A job needing more workers than wait
// is passed over for the next one that fits (backfill).
//
// The workers a job needs at once: JobSpec.workers, at least 1.
int WorkersNeeded(const pb::ResolvedJob& job);
// A worker may join a group: it said where its peers reach it.
bool CanJoinGang(const pb::WorkerInfo& worker);
// "cpu" or "cuda": a group's ranks are all of one kind.
std::string DeviceKind(const pb::WorkerInfo& worker);
// The group of `leader` (rank 0, whose rendezvous it names) and `others`.
pb::Gang FormGang(const pb::WorkerInfo& leader, const std::vector<std::string>& others);
// The lease of rank `rank` in `gang`.
pb::Lease RankLease(const std::string& job_id, const std::string& lease_id, absl::Duration ttl, int attempt,
                    int rank, const pb::Gang& gang);
// Rank `rank` of `worker_id` in job `job_id`, from the job's row (its
// state, lease id, attempts, serialised gang and resolved spec): the lease,
// or nothing when the job no longer runs on a group that gives the worker
// that rank (its rank 0 failed, the job was re-queued). DATA_LOSS when the
// spec does not parse.
absl::StatusOr<std::optional<LeasedJob>> TakenRank(const std::string& job_id, const std::string& worker_id, int rank,
                                                   int64_t state, const std::string& lease_id, int attempts,
                                                   const std::string& gang, const std::string& resolved,
                                                   absl::Duration ttl);
// The RUNNING message of a group's attempt.
std::string GangRunningMessage(const pb::WorkerInfo& leader, const pb::Gang& gang,
                               const JobStore::ResumePoint& resume);
// How long a waiting worker's row outlives its wait when it was given a
// rank it never took (it died): the job's rank 0 then finds no peer, and
// the attempt ends.
inline constexpr absl::Duration kUntakenRankGrace = absl::Seconds(60);

// What becomes of a job whose lease expired: QUEUED again, CANCELLED when
// its cancel was asked, FAILED once `attempts` reached `max_attempts`.
struct LeaseExpiry {
  pb::JobState state = pb::QUEUED;
  std::string message;  // the StateChanged message
  std::string error;    // the job's error, when FAILED
};
LeaseExpiry ExpireLease(const std::string& worker_id, int attempts, bool cancel_requested, int max_attempts);

}  // namespace ft::server

#endif  // FT_SERVER_JOBS_JOB_RECORDS_H_
