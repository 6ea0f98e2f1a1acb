#ifndef FT_SERVER_JOBS_POSTGRES_JOB_STORE_H_
#define FT_SERVER_JOBS_POSTGRES_JOB_STORE_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/util/clock.h"
#include "server/jobs/job_store.h"

struct pg_conn;

namespace ft::server {

struct PostgresJobStoreOptions {
  // A libpq connection URI, postgresql://[USER[:PASSWORD]@][HOST][:PORT][/DB][?PARAM=VALUE&...]
  // (postgres:// too). What it leaves out comes from libpq's defaults and
  // environment (PGPASSWORD, PGPASSFILE, PGSSLMODE, ...).
  std::string url;
  // Connections opened at most, on demand; a call finding all of them busy
  // waits for one.
  int max_connections = 4;
  // Not owned; must outlive the store. Defaults to the real clock. Leases
  // and timestamps use it, not the database's now(): replicas sharing a
  // database need clocks in step (NTP), as their leases are seconds long.
  util::Clock* clock = nullptr;
};

// JobStore on a PostgreSQL database, behaving as SqliteJobStore does, and
// safe for several server processes on one database: a job is leased with
// SELECT ... FOR UPDATE SKIP LOCKED, so two replicas never lease it twice,
// and every change to a job (its event numbers included) holds the job's row
// lock until it commits. A job or event that a call reported as stored is as
// durable as the database makes a commit (synchronous_commit).
//
// Create() brings the schema up to SchemaVersion() with numbered migrations
// recorded in schema_migrations, each in its own transaction under an
// advisory lock, so that replicas starting at once apply each exactly once.
//
// Every transaction that appends an event also NOTIFYs kChangeChannel with
// "<job_id>:<sequence>" (":queued" appended when the job became QUEUED), so
// the notification is delivered on commit only, to every process LISTENing:
// StartChangeFeed() runs that listener on a connection of its own, which is
// how several replicas fan events out to each other's watchers.
//
// Thread-safe: each call borrows a connection from a small pool. A
// connection the database dropped is reset on its next use; while the
// database cannot be reached, calls return UNAVAILABLE with libpq's reason.
// Errors and logs never show the URL's password.
class PostgresJobStore final : public JobStore {
 public:
  // INVALID_ARGUMENT for a malformed URL, UNAVAILABLE when the database
  // cannot be reached, FAILED_PRECONDITION for a schema newer than this
  // binary knows.
  static absl::StatusOr<std::unique_ptr<PostgresJobStore>> Create(const PostgresJobStoreOptions& options);
  ~PostgresJobStore() override;

  // The schema version Create() brings a database to.
  static int SchemaVersion();

  absl::StatusOr<pb::Job> CreateJob(const pb::ResolvedJob& job, const std::string& request_id) override;
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
  absl::StatusOr<pb::JobEvent> AppendEvent(const std::string& job_id, const std::string& lease_id,
                                           pb::JobEvent event) override;
  absl::StatusOr<std::vector<pb::JobEvent>> ReadEvents(const std::string& job_id, int64_t from_sequence,
                                                       int limit) override;
  absl::StatusOr<pb::ResolvedJob> GetResolvedJob(const std::string& job_id) override;
  // LISTENs on its own connection (not one of the pool's), on a thread of
  // its own. A dropped connection is reopened, every second while the
  // database is away, and then `on_resync` runs, since notifications sent
  // meanwhile are lost. FAILED_PRECONDITION when a feed runs already.
  absl::Status StartChangeFeed(ChangeFn on_change, std::function<void()> on_resync) override;
  void StopChangeFeed() override;

  // The channel NOTIFY and LISTEN use.
  static constexpr char kChangeChannel[] = "ft_events";

 private:
  // A connection borrowed from the pool (postgres_job_store.cc).
  class Connection;
  // The rank another worker's lease gave `worker_id` (its waiting row,
  // locked by the caller's transaction), taken: the row is deleted, and the
  // lease returned if the job still runs on that group.
  static absl::StatusOr<std::optional<LeasedJob>> TakeRank(Connection& c, const std::string& worker_id,
                                                           absl::Duration ttl);

  PostgresJobStore(const PostgresJobStoreOptions& options, std::vector<std::string> secrets,
                   std::unique_ptr<util::Clock> owned_clock);

  // `message` with the password starred out, in case libpq quoted it.
  std::string Scrub(std::string message) const;

  // Borrows an idle connection, or opens one while fewer than
  // max_connections are open, or waits.
  absl::StatusOr<Connection> Borrow();
  void GiveBack(pg_conn* conn);
  absl::StatusOr<pg_conn*> Connect();

  // Runs the read `body(connection)`; once more on a reset connection when
  // the first one turns out to have been dropped by the database.
  template <typename T, typename F>
  absl::StatusOr<T> Read(F body);
  // Runs `body(connection)` in a transaction, committing on OK and rolling
  // back on error.
  template <typename T, typename F>
  absl::StatusOr<T> InTransaction(F body);
  absl::Status Migrate();
  // The number a SELECT COUNT(*) returns.
  template <typename P>
  absl::StatusOr<int> Count(const char* sql, const P& params);

  // With `lock`, the job's row stays locked until the caller's transaction
  // ends: whatever the caller then writes was decided on the current row.
  absl::StatusOr<pb::Job> LoadJob(Connection& c, const std::string& job_id, bool lock = false);
  absl::Status CheckLeaseOn(Connection& c, const std::string& job_id, const std::string& lease_id,
                            bool lock = false);
  // Appends `event` with the next sequence; the caller holds a transaction.
  absl::StatusOr<pb::JobEvent> AppendEventLocked(Connection& c, const std::string& job_id, pb::JobEvent event);
  // The change feed's thread: connect, LISTEN, deliver, until stopped.
  void FeedLoop(const ChangeFn& on_change, const std::function<void()>& on_resync);
  // Delivers what `conn` has received; false when the connection broke.
  bool DrainNotifications(pg_conn* conn, const ChangeFn& on_change);
  // Waits up to `timeout` for StopChangeFeed; true when it was called.
  bool FeedStopping(absl::Duration timeout);

  const std::string url_;
  // The URL with its password starred out, for messages.
  const std::string shown_url_;
  // The password as the URL spells it and as decoded: never shown.
  const std::vector<std::string> secrets_;
  const int max_connections_;
  util::Clock* clock_;
  std::unique_ptr<util::Clock> owned_clock_;

  absl::Mutex mu_;
  std::vector<pg_conn*> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;

  absl::Mutex feed_mu_;
  bool feed_stopping_ ABSL_GUARDED_BY(feed_mu_) = false;
  std::thread feed_;
};

// Whether `url` names a PostgreSQL database: postgresql:// or postgres://.
bool IsPostgresUrl(const std::string& url);

// `url` with the password (user:PASSWORD@ or ?password=) replaced by ***.
std::string RedactDatabaseUrl(const std::string& url);

}  // namespace ft::server

#endif  // FT_SERVER_JOBS_POSTGRES_JOB_STORE_H_
