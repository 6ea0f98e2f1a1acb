#include "server/jobs/sqlite_job_store.h"

#include <sqlite3.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/util/status.h"
#include "common/util/tenant.h"
#include "server/jobs/job_records.h"

namespace ft::server {
namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS jobs (
  n INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  request_id TEXT UNIQUE,
  state INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  resolved BLOB NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '',
  model_id TEXT NOT NULL DEFAULT '',
  metrics BLOB,
  create_us INTEGER NOT NULL,
  start_us INTEGER NOT NULL DEFAULT 0,
  end_us INTEGER NOT NULL DEFAULT 0,
  worker_id TEXT NOT NULL DEFAULT '',
  lease_id TEXT NOT NULL DEFAULT '',
  lease_expires_us INTEGER NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  last_seq INTEGER NOT NULL DEFAULT 0,
  tenant TEXT NOT NULL DEFAULT 'default',
  workers INTEGER NOT NULL DEFAULT 1,
  gang BLOB
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(state, priority DESC, n);
CREATE TABLE IF NOT EXISTS waiting_workers (
  worker_id TEXT PRIMARY KEY,
  device_kind TEXT NOT NULL,
  since_us INTEGER NOT NULL,
  expires_us INTEGER NOT NULL,
  job_id TEXT NOT NULL DEFAULT '',
  rank INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
  job_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  data BLOB NOT NULL,
  PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
)sql";

// Databases made before tenants lack the column; every job in them belongs
// to the default tenant, which is what the column's default says.
constexpr const char* kAddTenant = "ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default'";
constexpr const char* kTenantIndex = "CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs(tenant, state)";
// And before multi-worker jobs (schema 3): every job needed one worker.
constexpr const char* kAddWorkers = "ALTER TABLE jobs ADD COLUMN workers INTEGER NOT NULL DEFAULT 1";
constexpr const char* kAddGang = "ALTER TABLE jobs ADD COLUMN gang BLOB";

// One prepared statement; finalised on destruction.
class Stmt {
 public:
  Stmt(sqlite3* db, const std::string& sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  absl::Status status() const {
    if (rc_ == SQLITE_OK) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("sqlite prepare: ", sqlite3_errmsg(db_)));
  }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Stmt& Bind(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(int i, const std::string& v) {
    sqlite3_bind_blob(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindNull(int i) {
    sqlite3_bind_null(stmt_, i);
    return *this;
  }
  // true when a row is available.
  absl::StatusOr<bool> Step() {
    FT_RETURN_IF_ERROR(status());
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return absl::InternalError(absl::StrCat("sqlite step: ", sqlite3_errmsg(db_)));
  }
  absl::Status Run() {
    FT_ASSIGN_OR_RETURN(bool row, Step());
    (void)row;
    return absl::OkStatus();
  }
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }
  std::string Text(int col) {
    const void* p = sqlite3_column_blob(stmt_, col);
    int n = sqlite3_column_bytes(stmt_, col);
    return p ? std::string(static_cast<const char*>(p), static_cast<size_t>(n)) : std::string();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

// The row at `s`, selected with kJobColumns.
absl::StatusOr<pb::Job> JobFromRow(Stmt& s) {
  JobRow row;
  row.id = s.Text(0);
  row.state = s.Int(1);
  row.resolved = s.Text(2);
  row.attempts = s.Int(3);
  row.error = s.Text(4);
  row.model_id = s.Text(5);
  row.metrics = s.Text(6);
  row.create_us = s.Int(7);
  row.start_us = s.Int(8);
  row.end_us = s.Int(9);
  row.worker_id = s.Text(10);
  row.cancel_requested = s.Int(11) != 0;
  row.last_seq = s.Int(12);
  row.tenant = s.Text(13);
  row.gang = s.Text(14);
  return ft::server::JobFromRow(row);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Create(
    const SqliteJobStoreOptions& options) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(options.path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat("cannot open database ", options.path, ": ", msg));
  }
  sqlite3_busy_timeout(db, 5000);
  std::unique_ptr<util::Clock> owned;
  util::Clock* clock = options.clock;
  if (clock == nullptr) {
    owned = std::make_unique<util::RealClock>();
    clock = owned.get();
  }
  std::unique_ptr<SqliteJobStore> store(new SqliteJobStore(db, clock, std::move(owned)));
  absl::MutexLock lock(&store->mu_);
  FT_RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"));
  FT_RETURN_IF_ERROR(store->Exec(kSchema));
  FT_RETURN_IF_ERROR(store->MigrateLocked());
  return store;
}

SqliteJobStore::SqliteJobStore(sqlite3* db, util::Clock* clock,
                               std::unique_ptr<util::Clock> owned_clock)
    : db_(db), clock_(clock), owned_clock_(std::move(owned_clock)) {}

SqliteJobStore::~SqliteJobStore() {
  absl::MutexLock lock(&mu_);
  sqlite3_close(db_);
}

absl::Status SqliteJobStore::MigrateLocked() {
  // Each later column, added where the file predates it.
  for (const auto& [column, sql] : {std::pair<const char*, const char*>{"tenant", kAddTenant},
                                    {"workers", kAddWorkers},
                                    {"gang", kAddGang}}) {
    Stmt s(db_, absl::StrCat("SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = '", column, "'"));
    FT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (row && s.Int(0) == 0) FT_RETURN_IF_ERROR(Exec(sql));
  }
  return Exec(kTenantIndex);
}

absl::Status SqliteJobStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("sqlite: ", msg));
  }
  return absl::OkStatus();
}

template <typename T, typename F>
absl::StatusOr<T> SqliteJobStore::InTransaction(F body) {
  FT_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  absl::StatusOr<T> result = body();
  if (result.ok()) {
    absl::Status commit = Exec("COMMIT");
    if (!commit.ok()) {
      (void)Exec("ROLLBACK");
      return commit;
    }
  } else {
    (void)Exec("ROLLBACK");
  }
  return result;
}

absl::StatusOr<pb::Job> SqliteJobStore::LoadJobLocked(const std::string& job_id) {
  Stmt s(db_, absl::StrCat("SELECT ", kJobColumns, " FROM jobs WHERE id = ?"));
  s.Bind(1, job_id);
  FT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return NoSuchJob(job_id);
  return JobFromRow(s);
}

absl::StatusOr<pb::JobEvent> SqliteJobStore::AppendEventLocked(const std::string& job_id,
                                                               pb::JobEvent event) {
  Stmt q(db_, "UPDATE jobs SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq");
  q.Bind(1, job_id);
  FT_ASSIGN_OR_RETURN(bool row, q.Step());
  if (!row) return NoSuchJob(job_id);
  StampEvent(job_id, q.Int(0), clock_->Now(), &event);
  Stmt ins(db_, "INSERT INTO events(job_id, seq, data) VALUES (?, ?, ?)");
  ins.Bind(1, job_id).Bind(2, event.sequence()).BindBlob(3, event.SerializeAsString());
  FT_RETURN_IF_ERROR(ins.Run());
  return event;
}

absl::Status SqliteJobStore::AppendStateLocked(const std::string& job_id, pb::JobState state,
                                               const std::string& message, int attempt,
                                               const std::string& worker_id,
                                               const std::string& model_id, int32_t resumed_epoch,
                                               int64_t resumed_step) {
  return AppendEventLocked(job_id, StateChangedEvent(state, message, attempt, worker_id, model_id,
                                                     {resumed_epoch, resumed_step}))
      .status();
}

absl::StatusOr<pb::Job> SqliteJobStore::CreateJob(const pb::ResolvedJob& job,
                                                  const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  return InTransaction<pb::Job>([&]() -> absl::StatusOr<pb::Job> {
    if (!request_id.empty()) {
      Stmt s(db_, "SELECT id FROM jobs WHERE request_id = ?");
      s.Bind(1, request_id);
      FT_ASSIGN_OR_RETURN(bool row, s.Step());
      if (row) return LoadJobLocked(s.Text(0));
    }
    const std::string id = NewStoreId("job-");
    Stmt ins(db_,
             "INSERT INTO jobs(id, request_id, state, priority, resolved, create_us, tenant, workers) "
             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
    ins.Bind(1, id);
    if (request_id.empty()) {
      ins.BindNull(2);
    } else {
      ins.Bind(2, request_id);
    }
    ins.Bind(3, pb::QUEUED)
        .Bind(4, job.spec().priority())
        .BindBlob(5, job.SerializeAsString())
        .Bind(6, ToMicros(clock_->Now()))
        .Bind(7, util::TenantOrDefault(job.tenant()))
        .Bind(8, WorkersNeeded(job));
    FT_RETURN_IF_ERROR(ins.Run());
    FT_RETURN_IF_ERROR(AppendStateLocked(id, pb::QUEUED, "queued", 0, "", ""));
    return LoadJobLocked(id);
  });
}

absl::StatusOr<pb::Job> SqliteJobStore::GetJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  return LoadJobLocked(job_id);
}

absl::StatusOr<std::vector<pb::Job>> SqliteJobStore::ListJobs(
    const std::vector<pb::JobState>& states, int limit, const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> where;
  if (!states.empty()) {
    std::vector<std::string> in;
    for (auto s : states) in.push_back(absl::StrCat(static_cast<int>(s)));
    where.push_back(absl::StrCat("state IN (", absl::StrJoin(in, ","), ")"));
  }
  if (!tenant.empty()) where.push_back("tenant = ?");
  Stmt s(db_, absl::StrCat("SELECT ", kJobColumns, " FROM jobs",
                           where.empty() ? "" : absl::StrCat(" WHERE ", absl::StrJoin(where, " AND ")),
                           " ORDER BY n DESC LIMIT ?"));
  int arg = 1;
  if (!tenant.empty()) s.Bind(arg++, tenant);
  s.Bind(arg, limit);
  std::vector<pb::Job> out;
  while (true) {
    FT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    FT_ASSIGN_OR_RETURN(pb::Job job, JobFromRow(s));
    out.push_back(std::move(job));
  }
  return out;
}

absl::StatusOr<int> SqliteJobStore::QueuePosition(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_,
         "SELECT COUNT(*) FROM jobs q, jobs j WHERE j.id = ? AND j.state = ? AND q.state = ? "
         "AND (q.priority > j.priority OR (q.priority = j.priority AND q.n <= j.n))");
  s.Bind(1, job_id).Bind(2, pb::QUEUED).Bind(3, pb::QUEUED);
  FT_ASSIGN_OR_RETURN(bool row, s.Step());
  return row ? static_cast<int>(s.Int(0)) : 0;
}

absl::StatusOr<int> SqliteJobStore::CountActive(const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "SELECT COUNT(*) FROM jobs WHERE tenant = ? AND state IN (?, ?)");
  s.Bind(1, tenant).Bind(2, pb::QUEUED).Bind(3, pb::RUNNING);
  FT_ASSIGN_OR_RETURN(bool row, s.Step());
  return row ? static_cast<int>(s.Int(0)) : 0;
}

absl::StatusOr<int> SqliteJobStore::CountInState(pb::JobState state) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "SELECT COUNT(*) FROM jobs WHERE state = ?");
  s.Bind(1, state);
  FT_ASSIGN_OR_RETURN(bool row, s.Step());
  return row ? static_cast<int>(s.Int(0)) : 0;
}

absl::StatusOr<std::optional<LeasedJob>> SqliteJobStore::TakeRankLocked(const std::string& worker_id,
                                                                        absl::Duration ttl) {
  Stmt w(db_, "SELECT job_id, rank FROM waiting_workers WHERE worker_id = ?");
  w.Bind(1, worker_id);
  FT_ASSIGN_OR_RETURN(bool waiting, w.Step());
  if (!waiting || w.Text(0).empty()) return std::optional<LeasedJob>();
  const std::string job_id = w.Text(0);
  const int rank = static_cast<int>(w.Int(1));
  Stmt del(db_, "DELETE FROM waiting_workers WHERE worker_id = ?");
  del.Bind(1, worker_id);
  FT_RETURN_IF_ERROR(del.Run());
  Stmt j(db_, "SELECT state, lease_id, attempts, gang, resolved FROM jobs WHERE id = ?");
  j.Bind(1, job_id);
  FT_ASSIGN_OR_RETURN(bool row, j.Step());
  if (!row) return std::optional<LeasedJob>();
  return TakenRank(job_id, worker_id, rank, j.Int(0), j.Text(1), static_cast<int>(j.Int(2)), j.Text(3), j.Text(4), ttl);
}

absl::StatusOr<std::optional<LeasedJob>> SqliteJobStore::LeaseNext(const pb::WorkerInfo& worker,
                                                                   absl::Duration ttl,
                                                                   const ResumePointFn& resume_point,
                                                                   absl::Time waiting_until) {
  absl::MutexLock lock(&mu_);
  return InTransaction<std::optional<LeasedJob>>(
      [&]() -> absl::StatusOr<std::optional<LeasedJob>> {
        const int64_t now = ToMicros(clock_->Now());
        // Rows of workers that stopped waiting without saying so, and ranks
        // never taken.
        Stmt stale(db_, "DELETE FROM waiting_workers WHERE expires_us < ? AND (job_id = '' OR expires_us < ?)");
        stale.Bind(1, now).Bind(2, now - absl::ToInt64Microseconds(kUntakenRankGrace));
        FT_RETURN_IF_ERROR(stale.Run());
        FT_ASSIGN_OR_RETURN(std::optional<LeasedJob> given, TakeRankLocked(worker.worker_id(), ttl));
        if (given.has_value()) return given;
        // Other workers of this kind waiting now, that a group could take.
        int64_t others_waiting = 0;
        if (CanJoinGang(worker)) {
          Stmt c(db_,
                 "SELECT COUNT(*) FROM waiting_workers WHERE job_id = '' AND expires_us > ? AND device_kind = ? "
                 "AND worker_id != ?");
          c.Bind(1, now).Bind(2, DeviceKind(worker)).Bind(3, worker.worker_id());
          FT_ASSIGN_OR_RETURN(bool counted, c.Step());
          if (counted) others_waiting = c.Int(0);
        }
        Stmt s(db_,
               "SELECT id, resolved, attempts, start_us, workers FROM jobs WHERE state = ? AND workers <= ? "
               "ORDER BY priority DESC, n ASC LIMIT 1");
        s.Bind(1, pb::QUEUED).Bind(2, others_waiting + 1);
        FT_ASSIGN_OR_RETURN(bool row, s.Step());
        if (!row) {
          if (CanJoinGang(worker) && waiting_until > clock_->Now()) {
            // Waits, and counts for the groups that other leases form.
            Stmt up(db_,
                    "INSERT INTO waiting_workers(worker_id, device_kind, since_us, expires_us) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(worker_id) DO UPDATE SET device_kind = excluded.device_kind, "
                    "expires_us = excluded.expires_us");
            up.Bind(1, worker.worker_id()).Bind(2, DeviceKind(worker)).Bind(3, now).Bind(4, ToMicros(waiting_until));
            FT_RETURN_IF_ERROR(up.Run());
          }
          return std::optional<LeasedJob>();
        }
        LeasedJob leased;
        const std::string id = s.Text(0);
        FT_ASSIGN_OR_RETURN(leased.job, ParseResolvedJob(id, s.Text(1)));
        const int attempt = static_cast<int>(s.Int(2)) + 1;
        const int64_t start = s.Int(3) > 0 ? s.Int(3) : now;
        const int needed = static_cast<int>(s.Int(4));
        std::vector<std::string> others;
        if (needed > 1) {
          // The longest waiting first.
          Stmt o(db_,
                 "SELECT worker_id FROM waiting_workers WHERE job_id = '' AND expires_us > ? AND device_kind = ? "
                 "AND worker_id != ? ORDER BY since_us, worker_id LIMIT ?");
          o.Bind(1, now).Bind(2, DeviceKind(worker)).Bind(3, worker.worker_id()).Bind(4, needed - 1);
          while (true) {
            FT_ASSIGN_OR_RETURN(bool more, o.Step());
            if (!more) break;
            others.push_back(o.Text(0));
          }
          if (static_cast<int>(others.size()) < needed - 1) return std::optional<LeasedJob>();
        }
        Stmt gone(db_, "DELETE FROM waiting_workers WHERE worker_id = ?");
        gone.Bind(1, worker.worker_id());
        FT_RETURN_IF_ERROR(gone.Run());
        const std::string lease_id = NewStoreId("lease-");
        const pb::Gang gang = needed > 1 ? FormGang(worker, others) : pb::Gang();
        Stmt u(db_,
               "UPDATE jobs SET state = ?, attempts = ?, start_us = ?, worker_id = ?, "
               "lease_id = ?, lease_expires_us = ?, gang = ? WHERE id = ?");
        u.Bind(1, pb::RUNNING)
            .Bind(2, attempt)
            .Bind(3, start)
            .Bind(4, worker.worker_id())
            .Bind(5, lease_id)
            .Bind(6, now + absl::ToInt64Microseconds(ttl))
            .BindBlob(7, needed > 1 ? gang.SerializeAsString() : std::string())
            .Bind(8, id);
        FT_RETURN_IF_ERROR(u.Run());
        for (size_t r = 0; r < others.size(); ++r) {
          Stmt give(db_, "UPDATE waiting_workers SET job_id = ?, rank = ? WHERE worker_id = ?");
          give.Bind(1, id).Bind(2, static_cast<int64_t>(r + 1)).Bind(3, others[r]);
          FT_RETURN_IF_ERROR(give.Run());
        }
        const ResumePoint resume = resume_point ? resume_point(id) : ResumePoint();
        pb::JobEvent running = StateChangedEvent(
            pb::RUNNING, needed > 1 ? GangRunningMessage(worker, gang, resume) : RunningMessage(worker, resume),
            attempt, worker.worker_id(), "", resume);
        if (needed > 1) *running.mutable_state_changed()->mutable_workers() = gang.workers();
        FT_RETURN_IF_ERROR(AppendEventLocked(id, std::move(running)).status());
        leased.lease = needed > 1 ? RankLease(id, lease_id, ttl, attempt, 0, gang) : NewLease(id, lease_id, ttl, attempt);
        return std::optional<LeasedJob>(std::move(leased));
      });
}

absl::StatusOr<std::optional<LeasedJob>> SqliteJobStore::StopWaiting(const pb::WorkerInfo& worker,
                                                                     absl::Duration ttl) {
  absl::MutexLock lock(&mu_);
  return InTransaction<std::optional<LeasedJob>>([&]() -> absl::StatusOr<std::optional<LeasedJob>> {
    FT_ASSIGN_OR_RETURN(std::optional<LeasedJob> given, TakeRankLocked(worker.worker_id(), ttl));
    if (given.has_value()) return given;
    Stmt del(db_, "DELETE FROM waiting_workers WHERE worker_id = ?");
    del.Bind(1, worker.worker_id());
    FT_RETURN_IF_ERROR(del.Run());
    return std::optional<LeasedJob>();
  });
}

absl::StatusOr<int> SqliteJobStore::CountWaiting() {
  absl::MutexLock lock(&mu_);
  Stmt c(db_, "SELECT COUNT(*) FROM waiting_workers WHERE job_id = '' AND expires_us > ?");
  c.Bind(1, ToMicros(clock_->Now()));
  FT_ASSIGN_OR_RETURN(bool row, c.Step());
  return row ? static_cast<int>(c.Int(0)) : 0;
}

absl::StatusOr<int64_t> SqliteJobStore::QueuedWorkerDemand() {
  absl::MutexLock lock(&mu_);
  Stmt c(db_, "SELECT COALESCE(SUM(workers), 0) FROM jobs WHERE state = ?");
  c.Bind(1, pb::QUEUED);
  FT_ASSIGN_OR_RETURN(bool row, c.Step());
  return row ? c.Int(0) : 0;
}

absl::Status SqliteJobStore::CheckLeaseLocked(const std::string& job_id,
                                              const std::string& lease_id) {
  Stmt s(db_, "SELECT state, lease_id FROM jobs WHERE id = ?");
  s.Bind(1, job_id);
  FT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return NoSuchJob(job_id);
  return CheckLeaseHolds(job_id, lease_id, s.Int(0), s.Text(1));
}

absl::Status SqliteJobStore::CheckLease(const std::string& job_id, const std::string& lease_id) {
  absl::MutexLock lock(&mu_);
  return CheckLeaseLocked(job_id, lease_id);
}

absl::Status SqliteJobStore::ReleaseLease(const std::string& job_id,
                                          const std::string& lease_id) {
  absl::MutexLock lock(&mu_);
  FT_RETURN_IF_ERROR(CheckLeaseLocked(job_id, lease_id));
  Stmt u(db_, "UPDATE jobs SET lease_expires_us = 0 WHERE id = ?");
  u.Bind(1, job_id);
  return u.Run();
}

absl::StatusOr<pb::Job> SqliteJobStore::ReturnJob(const std::string& job_id, const std::string& lease_id,
                                                  const std::string& reason) {
  absl::MutexLock lock(&mu_);
  return InTransaction<pb::Job>([&]() -> absl::StatusOr<pb::Job> {
    FT_RETURN_IF_ERROR(CheckLeaseLocked(job_id, lease_id));
    FT_ASSIGN_OR_RETURN(pb::Job job, LoadJobLocked(job_id));
    const int64_t now = ToMicros(clock_->Now());
    if (job.cancel_requested()) {
      Stmt u(db_, "UPDATE jobs SET state = ?, lease_id = '', lease_expires_us = 0, end_us = ? WHERE id = ?");
      u.Bind(1, pb::CANCELLED).Bind(2, now).Bind(3, job_id);
      FT_RETURN_IF_ERROR(u.Run());
      FT_RETURN_IF_ERROR(AppendStateLocked(job_id, pb::CANCELLED, absl::StrCat("cancelled (", reason, ")"),
                                           job.attempts(), job.worker_id(), ""));
      return LoadJobLocked(job_id);
    }
    // Not a failure: the attempt is given back, so that preemptions never
    // use up --max-attempts.
    const int attempts = std::max(0, job.attempts() - 1);
    Stmt u(db_, "UPDATE jobs SET state = ?, attempts = ?, lease_id = '', lease_expires_us = 0 WHERE id = ?");
    u.Bind(1, pb::QUEUED).Bind(2, attempts).Bind(3, job_id);
    FT_RETURN_IF_ERROR(u.Run());
    FT_RETURN_IF_ERROR(AppendStateLocked(job_id, pb::QUEUED, ReturnedMessage(job.worker_id(), reason),
                                         job.attempts(), job.worker_id(), ""));
    return LoadJobLocked(job_id);
  });
}

absl::StatusOr<pb::Job> SqliteJobStore::RenewLease(const std::string& job_id,
                                                   const std::string& lease_id,
                                                   absl::Duration ttl) {
  absl::MutexLock lock(&mu_);
  FT_RETURN_IF_ERROR(CheckLeaseLocked(job_id, lease_id));
  Stmt u(db_, "UPDATE jobs SET lease_expires_us = ? WHERE id = ?");
  u.Bind(1, ToMicros(clock_->Now()) + absl::ToInt64Microseconds(ttl)).Bind(2, job_id);
  FT_RETURN_IF_ERROR(u.Run());
  return LoadJobLocked(job_id);
}

absl::StatusOr<pb::Job> SqliteJobStore::FinishJob(const std::string& job_id,
                                                  const std::string& lease_id,
                                                  const pb::JobResult& result) {
  if (!IsTerminal(result.state())) {
    return absl::InvalidArgumentError("a job result must be SUCCEEDED, FAILED or CANCELLED");
  }
  absl::MutexLock lock(&mu_);
  return InTransaction<pb::Job>([&]() -> absl::StatusOr<pb::Job> {
    FT_RETURN_IF_ERROR(CheckLeaseLocked(job_id, lease_id));
    FT_ASSIGN_OR_RETURN(pb::Job job, LoadJobLocked(job_id));
    Stmt u(db_,
           "UPDATE jobs SET state = ?, error = ?, model_id = ?, metrics = ?, end_us = ?, "
           "lease_id = '', lease_expires_us = 0 WHERE id = ?");
    u.Bind(1, result.state())
        .Bind(2, result.error())
        .Bind(3, result.model_id())
        .BindBlob(4, result.metrics().SerializeAsString())
        .Bind(5, ToMicros(clock_->Now()))
        .Bind(6, job_id);
    FT_RETURN_IF_ERROR(u.Run());
    FT_RETURN_IF_ERROR(AppendStateLocked(job_id, result.state(), FinishedMessage(result), job.attempts(),
                                         job.worker_id(), result.model_id()));
    return LoadJobLocked(job_id);
  });
}

absl::StatusOr<pb::Job> SqliteJobStore::RequestCancel(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  return InTransaction<pb::Job>([&]() -> absl::StatusOr<pb::Job> {
    FT_ASSIGN_OR_RETURN(pb::Job job, LoadJobLocked(job_id));
    if (job.state() == pb::QUEUED) {
      Stmt u(db_, "UPDATE jobs SET state = ?, cancel_requested = 1, end_us = ? WHERE id = ?");
      u.Bind(1, pb::CANCELLED).Bind(2, ToMicros(clock_->Now())).Bind(3, job_id);
      FT_RETURN_IF_ERROR(u.Run());
      FT_RETURN_IF_ERROR(
          AppendStateLocked(job_id, pb::CANCELLED, "cancelled while queued", job.attempts(), "", ""));
    } else if (job.state() == pb::RUNNING && !job.cancel_requested()) {
      Stmt u(db_, "UPDATE jobs SET cancel_requested = 1 WHERE id = ?");
      u.Bind(1, job_id);
      FT_RETURN_IF_ERROR(u.Run());
      pb::JobEvent event;
      event.mutable_log()->set_level("info");
      event.mutable_log()->set_message("cancellation requested");
      FT_RETURN_IF_ERROR(AppendEventLocked(job_id, std::move(event)).status());
    }
    return LoadJobLocked(job_id);
  });
}

absl::StatusOr<std::vector<ExpiredLease>> SqliteJobStore::ExpireLeases(int max_attempts) {
  absl::MutexLock lock(&mu_);
  return InTransaction<std::vector<ExpiredLease>>(
      [&]() -> absl::StatusOr<std::vector<ExpiredLease>> {
        const int64_t now = ToMicros(clock_->Now());
        Stmt s(db_,
               "SELECT id, attempts, worker_id, cancel_requested FROM jobs "
               "WHERE state = ? AND lease_expires_us < ?");
        s.Bind(1, pb::RUNNING).Bind(2, now);
        struct Row {
          std::string id;
          int attempts;
          std::string worker;
          bool cancel;
        };
        std::vector<Row> rows;
        while (true) {
          FT_ASSIGN_OR_RETURN(bool row, s.Step());
          if (!row) break;
          rows.push_back({s.Text(0), static_cast<int>(s.Int(1)), s.Text(2), s.Int(3) != 0});
        }
        std::vector<ExpiredLease> out;
        for (const Row& r : rows) {
          const LeaseExpiry next = ExpireLease(r.worker, r.attempts, r.cancel, max_attempts);
          Stmt u(db_,
                 "UPDATE jobs SET state = ?, error = ?, lease_id = '', lease_expires_us = 0, "
                 "end_us = ? WHERE id = ?");
          u.Bind(1, next.state).Bind(2, next.error).Bind(3, IsTerminal(next.state) ? now : 0).Bind(4, r.id);
          FT_RETURN_IF_ERROR(u.Run());
          FT_RETURN_IF_ERROR(AppendStateLocked(r.id, next.state, next.message, r.attempts, r.worker, ""));
          out.push_back({r.id, next.state});
        }
        return out;
      });
}

absl::StatusOr<pb::JobEvent> SqliteJobStore::AppendEvent(const std::string& job_id,
                                                         const std::string& lease_id,
                                                         pb::JobEvent event) {
  if (event.has_state_changed()) {
    return absl::InvalidArgumentError("workers cannot append state changes");
  }
  absl::MutexLock lock(&mu_);
  return InTransaction<pb::JobEvent>([&]() -> absl::StatusOr<pb::JobEvent> {
    FT_RETURN_IF_ERROR(CheckLeaseLocked(job_id, lease_id));
    return AppendEventLocked(job_id, std::move(event));
  });
}

absl::StatusOr<std::vector<pb::JobEvent>> SqliteJobStore::ReadEvents(const std::string& job_id,
                                                                     int64_t from_sequence,
                                                                     int limit) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "SELECT data FROM events WHERE job_id = ? AND seq >= ? ORDER BY seq LIMIT ?");
  s.Bind(1, job_id).Bind(2, from_sequence).Bind(3, limit);
  std::vector<pb::JobEvent> out;
  while (true) {
    FT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    pb::JobEvent e;
    if (!e.ParseFromString(s.Text(0))) {
      return absl::DataLossError(absl::StrCat("corrupt event in job ", job_id));
    }
    out.push_back(std::move(e));
  }
  return out;
}

absl::StatusOr<pb::ResolvedJob> SqliteJobStore::GetResolvedJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "SELECT resolved FROM jobs WHERE id = ?");
  s.Bind(1, job_id);
  FT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return NoSuchJob(job_id);
  return ParseResolvedJob(job_id, s.Text(0));
}

}  // namespace ft::server
