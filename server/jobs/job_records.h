// What the two JobStore implementations (SqliteJobStore, PostgresJobStore)
// share: a job as its database row holds it, the StateChanged events and
// messages of each transition, and new ids. Keeping these in one place is
// what makes the backends behave the same; each store keeps only its SQL.
//
// Schema versions, the same on both backends: 1, the jobs and events tables;
// 2, jobs.tenant (and its index). PostgresJobStore records them in
// schema_migrations; SqliteJobStore has no version table and recognises
// version 1 by the missing column (SqliteJobStore::MigrateLocked).
#ifndef FT_SERVER_JOBS_JOB_RECORDS_H_
#define FT_SERVER_JOBS_JOB_RECORDS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/jobs/job_store.h"

namespace ft::server {

// The columns a job is read back with, in JobRow's order; both schemas name
// them alike.
inline constexpr char kJobColumns[] =
    "id, state, resolved, attempts, error, model_id, metrics, create_us, start_us, end_us, "
    "worker_id, cancel_requested, last_seq, tenant";

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
