#ifndef FT_SERVER_JOBS_SQLITE_JOB_STORE_H_
#define FT_SERVER_JOBS_SQLITE_JOB_STORE_H_

#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "common/util/clock.h"
#include "server/jobs/job_store.h"

struct sqlite3;

namespace ft::server {

struct SqliteJobStoreOptions {
  // Path of the database file; created if missing.
  std::string path;
  // Not owned; must outlive the store. Defaults to the real clock.
  util::Clock* clock = nullptr;
};

// JobStore on one SQLite file in WAL mode, synchronous=FULL: a job or event
// that a call reported as stored survives a crash of the server.
// One connection, serialised by a mutex.
class SqliteJobStore final : public JobStore {
 public:
  static absl::StatusOr<std::unique_ptr<SqliteJobStore>> Create(
      const SqliteJobStoreOptions& options);
  ~SqliteJobStore() override;

  absl::StatusOr<pb::Job> CreateJob(const pb::ResolvedJob& job,
                                    const std::string& request_id) override;
  absl::StatusOr<pb::Job> GetJob(const std::string& job_id) override;
  absl::StatusOr<std::vector<pb::Job>> ListJobs(const std::vector<pb::JobState>& states, int limit,
                                                const std::string& tenant) override;
  absl::StatusOr<int> QueuePosition(const std::string& job_id) override;
  absl::StatusOr<int> CountInState(pb::JobState state) override;
  absl::StatusOr<int> CountActive(const std::string& tenant) override;
  absl::StatusOr<std::optional<LeasedJob>> LeaseNext(const pb::WorkerInfo& worker, absl::Duration ttl,
                                                     const ResumePointFn& resume_point = nullptr,
                                                     absl::Time waiting_until = absl::InfinitePast()) override;
  absl::StatusOr<std::optional<LeasedJob>> StopWaiting(const pb::WorkerInfo& worker, absl::Duration ttl) override;
  absl::StatusOr<int> CountWaiting() override;
  absl::StatusOr<int64_t> QueuedWorkerDemand() override;
  absl::StatusOr<pb::Job> RenewLease(const std::string& job_id, const std::string& lease_id,
                                     absl::Duration ttl) override;
  absl::StatusOr<pb::Job> FinishJob(const std::string& job_id, const std::string& lease_id,
                                    const pb::JobResult& result) override;
  absl::StatusOr<pb::Job> RequestCancel(const std::string& job_id) override;
  absl::StatusOr<std::vector<ExpiredLease>> ExpireLeases(int max_attempts) override;
  absl::Status ReleaseLease(const std::string& job_id, const std::string& lease_id) override;
  absl::StatusOr<pb::Job> ReturnJob(const std::string& job_id, const std::string& lease_id,
                                    const std::string& reason) override;
  absl::Status CheckLease(const std::string& job_id, const std::string& lease_id) override;
  absl::StatusOr<pb::JobEvent> AppendEvent(const std::string& job_id,
                                           const std::string& lease_id,
                                           pb::JobEvent event) override;
  absl::StatusOr<std::vector<pb::JobEvent>> ReadEvents(const std::string& job_id,
                                                       int64_t from_sequence,
                                                       int limit) override;
  absl::StatusOr<pb::ResolvedJob> GetResolvedJob(const std::string& job_id) override;

 private:
  SqliteJobStore(sqlite3* db, util::Clock* clock, std::unique_ptr<util::Clock> owned_clock);

  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Brings a database made by an older finetuned up to the current schema.
  absl::Status MigrateLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The rank another worker's lease gave `worker_id` (its waiting row),
  // taken: the row is gone, and the lease returned if the job still runs
  // on that group.
  absl::StatusOr<std::optional<LeasedJob>> TakeRankLocked(const std::string& worker_id, absl::Duration ttl)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<pb::Job> LoadJobLocked(const std::string& job_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckLeaseLocked(const std::string& job_id, const std::string& lease_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Appends `event` with the next sequence; the caller holds a transaction.
  absl::StatusOr<pb::JobEvent> AppendEventLocked(const std::string& job_id,
                                                 pb::JobEvent event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status AppendStateLocked(const std::string& job_id, pb::JobState state,
                                 const std::string& message, int attempt,
                                 const std::string& worker_id, const std::string& model_id, int32_t resumed_epoch = 0,
                                 int64_t resumed_step = 0) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs `body` in a transaction, committing on OK and rolling back on error.
  template <typename T, typename F>
  absl::StatusOr<T> InTransaction(F body) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_);
  util::Clock* clock_;
  std::unique_ptr<util::Clock> owned_clock_;
};

}  // namespace ft::server

#endif  // FT_SERVER_JOBS_SQLITE_JOB_STORE_H_
