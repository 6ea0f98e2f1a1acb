#include "server/jobs/postgres_job_store.h"

#include <libpq-fe.h>
#include <poll.h>

#include <cerrno>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/util/log.h"
#include "common/util/status.h"
#include "common/util/tenant.h"
#include "server/jobs/job_records.h"

namespace ft::server {
namespace {

// The schema, one migration a version (job_records.h lists what each
// added). A migration, once released, never changes: a database records
// the versions applied to it, not their text.
struct Migration {
  int version;
  const char* sql;
};

constexpr Migration kMigrations[] = {
    {1, R"sql(
CREATE TABLE jobs (
  n BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  request_id TEXT UNIQUE,
  state INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  resolved BYTEA NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '',
  model_id TEXT NOT NULL DEFAULT '',
  metrics BYTEA,
  create_us BIGINT NOT NULL,
  start_us BIGINT NOT NULL DEFAULT 0,
  end_us BIGINT NOT NULL DEFAULT 0,
  worker_id TEXT NOT NULL DEFAULT '',
  lease_id TEXT NOT NULL DEFAULT '',
  lease_expires_us BIGINT NOT NULL DEFAULT 0,
  cancel_requested BOOLEAN NOT NULL DEFAULT false,
  last_seq BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_queue ON jobs(state, priority DESC, n);
CREATE TABLE events (
  job_id TEXT NOT NULL,
  seq BIGINT NOT NULL,
  data BYTEA NOT NULL,
  PRIMARY KEY (job_id, seq)
);
)sql"},
    {2, R"sql(
ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
CREATE INDEX jobs_tenant ON jobs(tenant, state);
)sql"},
    {3, R"sql(
ALTER TABLE jobs ADD COLUMN workers INTEGER NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN gang BYTEA;
CREATE TABLE waiting_workers (
  worker_id TEXT PRIMARY KEY,
  device_kind TEXT NOT NULL,
  since_us BIGINT NOT NULL,
  expires_us BIGINT NOT NULL,
  job_id TEXT NOT NULL DEFAULT '',
  rank INTEGER NOT NULL DEFAULT 0
);
)sql"},
};
constexpr int kSchemaVersion = static_cast<int>(sizeof(kMigrations) / sizeof(kMigrations[0]));

// Ends a change notification's payload when the job became QUEUED, so that
// idle leasers on every replica look again.
constexpr char kQueuedSuffix[] = ":queued";

constexpr char kMigrationsTable[] =
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())";

// The advisory lock that serialises migrations across processes: any
// constant that other users of the database do not pick ("ft_schem").
constexpr int64_t kMigrationLock = 0x66745f736368656d;

// libpq's messages end in a newline and may continue on tab-indented
// lines; a Status message is one line.
std::string OneLine(absl::string_view message) {
  return absl::StrJoin(absl::StrSplit(message, absl::ByAnyChar(" \t\n"), absl::SkipEmpty()), " ");
}

// Query parameters, passed apart from the SQL text: strings and numbers as
// text, protos as binary bytea.
class Params {
 public:
  Params& Add(const std::string& text) { return Push(text, /*binary=*/false); }
  Params& Add(int64_t v) { return Push(absl::StrCat(v), /*binary=*/false); }
  Params& AddBytes(const std::string& bytes) { return Push(bytes, /*binary=*/true); }
  Params& AddNull() {
    Push("", /*binary=*/false);
    null_.back() = true;
    return *this;
  }
  // A LIMIT: negative means none, as it does in SQLite.
  Params& AddLimit(int limit) { return limit < 0 ? AddNull() : Add(limit); }

  int size() const { return static_cast<int>(values_.size()); }
  // Views for PQexecParams, valid while these Params live unchanged.
  std::vector<const char*> values() const {
    std::vector<const char*> out;
    for (int i = 0; i < size(); ++i) out.push_back(null_[i] ? nullptr : values_[i].data());
    return out;
  }
  std::vector<int> lengths() const {
    std::vector<int> out;
    for (const std::string& v : values_) out.push_back(static_cast<int>(v.size()));
    return out;
  }
  const std::vector<int>& formats() const { return formats_; }

 private:
  Params& Push(std::string value, bool binary) {
    values_.push_back(std::move(value));
    formats_.push_back(binary ? 1 : 0);
    null_.push_back(false);
    return *this;
  }

  std::vector<std::string> values_;
  std::vector<int> formats_;
  std::vector<bool> null_;
};

// The rows of one statement, read as text (bytea decoded).
class Result {
 public:
  explicit Result(PGresult* result) : result_(result, &PQclear) {}

  const PGresult* get() const { return result_.get(); }
  int rows() const { return PQntuples(result_.get()); }
  std::string Text(int row, int col) const {
    return std::string(PQgetvalue(result_.get(), row, col),
                       static_cast<size_t>(PQgetlength(result_.get(), row, col)));
  }
  // NULL reads as 0.
  int64_t Int(int row, int col) const {
    int64_t v = 0;
    return absl::SimpleAtoi(PQgetvalue(result_.get(), row, col), &v) ? v : 0;
  }
  bool Bool(int row, int col) const { return PQgetvalue(result_.get(), row, col)[0] == 't'; }
  // A bytea column; NULL reads as empty.
  std::string Bytes(int row, int col) const {
    if (PQgetisnull(result_.get(), row, col)) return "";
    size_t n = 0;
    unsigned char* bytes =
        PQunescapeBytea(reinterpret_cast<const unsigned char*>(PQgetvalue(result_.get(), row, col)), &n);
    if (bytes == nullptr) return "";
    std::string out(reinterpret_cast<const char*>(bytes), n);
    PQfreemem(bytes);
    return out;
  }

 private:
  std::unique_ptr<PGresult, void (*)(PGresult*)> result_;
};

// A failed statement as a Status: UNAVAILABLE when the connection or the
// server is gone (SQLSTATE classes 08 and 57P: it may work again later),
// ABORTED for a deadlock or serialization failure, INTERNAL otherwise.
absl::Status QueryError(PGconn* conn, const PGresult* result) {
  std::string message = result != nullptr ? PQresultErrorMessage(result) : "";
  if (message.empty()) message = PQerrorMessage(conn);
  const char* code = result != nullptr ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  const std::string sqlstate = code != nullptr ? code : "";
  const std::string text = absl::StrCat("postgresql: ", OneLine(message));
  if (PQstatus(conn) != CONNECTION_OK || absl::StartsWith(sqlstate, "08") || absl::StartsWith(sqlstate, "57P")) {
    return absl::UnavailableError(text);
  }
  if (sqlstate == "40001" || sqlstate == "40P01") return absl::AbortedError(text);
  return absl::InternalError(text);
}

// The row `i` of `r`, selected with kJobColumns.
absl::StatusOr<pb::Job> JobFromResult(const Result& r, int i) {
  JobRow row;
  row.id = r.Text(i, 0);
  row.state = r.Int(i, 1);
  row.resolved = r.Bytes(i, 2);
  row.attempts = r.Int(i, 3);
  row.error = r.Text(i, 4);
  row.model_id = r.Text(i, 5);
  row.metrics = r.Bytes(i, 6);
  row.create_us = r.Int(i, 7);
  row.start_us = r.Int(i, 8);
  row.end_us = r.Int(i, 9);
  row.worker_id = r.Text(i, 10);
  row.cancel_requested = r.Bool(i, 11);
  row.last_seq = r.Int(i, 12);
  row.tenant = r.Text(i, 13);
  row.gang = r.Bytes(i, 14);
  return JobFromRow(row);
}

// Where the password stands in `url`: after "user:" up to the '@' that
// ends the user info, and as ?password= or &password=. [begin, end) pairs.
std::vector<std::pair<size_t, size_t>> PasswordSpans(const std::string& url) {
  std::vector<std::pair<size_t, size_t>> spans;
  const size_t scheme = url.find("://");
  if (scheme == std::string::npos) return spans;
  const size_t start = scheme + 3;
  const size_t query = url.find('?', start);
  // The last '@' before the query: a password may hold '/' unencoded, a
  // host never holds '@'.
  const size_t at = url.rfind('@', query == std::string::npos ? std::string::npos : query);
  if (at != std::string::npos && at >= start) {
    const size_t colon = url.find(':', start);
    if (colon != std::string::npos && colon < at) spans.emplace_back(colon + 1, at);
  }
  for (size_t p = query; p != std::string::npos && p < url.size(); p = url.find('&', p + 1)) {
    if (url.compare(p + 1, 9, "password=") != 0) continue;
    const size_t begin = p + 10;
    const size_t end = url.find('&', begin);
    spans.emplace_back(begin, end == std::string::npos ? url.size() : end);
  }
  return spans;
}

}  // namespace

bool IsPostgresUrl(const std::string& url) {
  return absl::StartsWith(url, "postgresql://") || absl::StartsWith(url, "postgres://");
}

std::string RedactDatabaseUrl(const std::string& url) {
  std::string out = url;
  const auto spans = PasswordSpans(url);
  // Back to front, so that earlier offsets stay valid.
  for (auto it = spans.rbegin(); it != spans.rend(); ++it) out.replace(it->first, it->second - it->first, "***");
  return out;
}

// A connection borrowed from the store's pool, given back when destroyed.
class PostgresJobStore::Connection {
 public:
  Connection(PostgresJobStore* store, PGconn* conn) : store_(store), conn_(conn) {}
  Connection(Connection&& other) noexcept : store_(other.store_), conn_(std::exchange(other.conn_, nullptr)) {}
  Connection& operator=(Connection&&) = delete;
  ~Connection() {
    if (conn_ != nullptr) store_->GiveBack(conn_);
  }

  // One statement, its values passed as parameters, never spliced in.
  absl::StatusOr<Result> Exec(const char* sql, const Params& params = Params()) {
    const std::vector<const char*> values = params.values();
    const std::vector<int> lengths = params.lengths();
    Result result(PQexecParams(conn_, sql, params.size(), /*paramTypes=*/nullptr, values.data(), lengths.data(),
                               params.formats().data(), /*resultFormat=*/0));
    return Check(std::move(result));
  }
  absl::Status Run(const char* sql, const Params& params = Params()) { return Exec(sql, params).status(); }
  // Several statements without parameters: constant SQL only.
  absl::Status RunScript(const char* sql) { return Check(Result(PQexec(conn_, sql))).status(); }

  // Whether the database dropped this connection (it finds out on use).
  bool broken() const { return PQstatus(conn_) != CONNECTION_OK; }
  absl::Status Reset() {
    PQreset(conn_);
    if (!broken()) return absl::OkStatus();
    return absl::UnavailableError(absl::StrCat("cannot reconnect to PostgreSQL at ", store_->shown_url_, ": ",
                                               store_->Scrub(OneLine(PQerrorMessage(conn_)))));
  }

 private:
  absl::StatusOr<Result> Check(Result result) {
    // PQresultStatus(nullptr), out of memory, is PGRES_FATAL_ERROR.
    const ExecStatusType status = PQresultStatus(result.get());
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) return QueryError(conn_, result.get());
    return result;
  }

  PostgresJobStore* store_;
  PGconn* conn_;
};

absl::StatusOr<std::unique_ptr<PostgresJobStore>> PostgresJobStore::Create(const PostgresJobStoreOptions& options) {
  const std::string shown = RedactDatabaseUrl(options.url);
  if (!IsPostgresUrl(options.url)) {
    return absl::InvalidArgumentError(
        absl::StrCat("database URL '", shown, "' is not a PostgreSQL URL (postgresql://USER@HOST:PORT/DB)"));
  }
  std::vector<std::string> secrets;
  for (const auto& [begin, end] : PasswordSpans(options.url)) {
    if (end > begin) secrets.push_back(options.url.substr(begin, end - begin));
  }
  char* error = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(options.url.c_str(), &error);
  if (parsed == nullptr) {
    std::string message = error != nullptr ? OneLine(error) : "out of memory";
    PQfreemem(error);
    for (const std::string& secret : secrets) absl::StrReplaceAll({{secret, "***"}}, &message);
    return absl::InvalidArgumentError(absl::StrCat("bad database URL ", shown, ": ", message));
  }
  for (PQconninfoOption* o = parsed; o->keyword != nullptr; ++o) {
    // As libpq decoded it (percent-escapes), in case a message quotes it so.
    if (std::string(o->keyword) == "password" && o->val != nullptr && *o->val != '\0') secrets.push_back(o->val);
  }
  PQconninfoFree(parsed);
  if (options.max_connections < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_connections must be at least 1, got ",
                                                   options.max_connections));
  }
  std::unique_ptr<util::Clock> owned;
  if (options.clock == nullptr) owned = std::make_unique<util::RealClock>();
  std::unique_ptr<PostgresJobStore> store(new PostgresJobStore(options, std::move(secrets), std::move(owned)));
  // Connects now: a wrong URL or a database that is down is a start-up
  // error, not the first call's.
  FT_RETURN_IF_ERROR(store->Migrate());
  return store;
}

PostgresJobStore::PostgresJobStore(const PostgresJobStoreOptions& options, std::vector<std::string> secrets,
                                   std::unique_ptr<util::Clock> owned_clock)
    : url_(options.url),
      shown_url_(RedactDatabaseUrl(options.url)),
      secrets_(std::move(secrets)),
      max_connections_(options.max_connections),
      clock_(options.clock != nullptr ? options.clock : owned_clock.get()),
      owned_clock_(std::move(owned_clock)) {}

PostgresJobStore::~PostgresJobStore() {
  StopChangeFeed();
  absl::MutexLock lock(&mu_);
  for (PGconn* conn : idle_) PQfinish(conn);
}

int PostgresJobStore::SchemaVersion() { return kSchemaVersion; }

std::string PostgresJobStore::Scrub(std::string message) const {
  for (const std::string& secret : secrets_) absl::StrReplaceAll({{secret, "***"}}, &message);
  return message;
}

absl::StatusOr<PGconn*> PostgresJobStore::Connect() {
  // Defaults that the URL may override, as they come before it; without a
  // connect_timeout libpq would wait on an unanswering host for minutes.
  const char* keywords[] = {"connect_timeout", "application_name", "dbname", nullptr};
  const char* values[] = {"10", "finetuned", url_.c_str(), nullptr};
  PGconn* conn = PQconnectdbParams(keywords, values, /*expand_dbname=*/1);
  if (conn == nullptr) return absl::ResourceExhaustedError("postgresql: out of memory for a connection");
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string message = Scrub(OneLine(PQerrorMessage(conn)));
    PQfinish(conn);
    return absl::UnavailableError(absl::StrCat("cannot connect to PostgreSQL at ", shown_url_, ": ", message));
  }
  // NOTICEs ("relation ... already exists, skipping") would go to stderr.
  PQsetNoticeProcessor(
      conn, [](void*, const char*) {}, nullptr);
  return conn;
}

absl::StatusOr<PostgresJobStore::Connection> PostgresJobStore::Borrow() {
  PGconn* conn = nullptr;
  {
    absl::MutexLock lock(&mu_);
    auto available = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !idle_.empty() || open_ < max_connections_;
    };
    mu_.Await(absl::Condition(&available));
    if (!idle_.empty()) {
      conn = idle_.back();
      idle_.pop_back();
    } else {
      ++open_;
    }
  }
  if (conn == nullptr) {
    absl::StatusOr<PGconn*> opened = Connect();
    if (!opened.ok()) {
      absl::MutexLock lock(&mu_);
      --open_;
      return opened.status();
    }
    conn = *opened;
  }
  Connection c(this, conn);
  // Its last use found the database gone: reconnect first (given back
  // still broken if that fails, to be tried again by the next call).
  if (c.broken()) FT_RETURN_IF_ERROR(c.Reset());
  return absl::StatusOr<Connection>(std::move(c));
}

void PostgresJobStore::GiveBack(PGconn* conn) {
  // Never hand on a connection inside a transaction (a ROLLBACK that failed).
  const PGTransactionStatusType in = PQtransactionStatus(conn);
  if (in == PQTRANS_INTRANS || in == PQTRANS_INERROR) PQclear(PQexec(conn, "ROLLBACK"));
  absl::MutexLock lock(&mu_);
  idle_.push_back(conn);
}

template <typename T, typename F>
absl::StatusOr<T> PostgresJobStore::Read(F body) {
  FT_ASSIGN_OR_RETURN(Connection c, Borrow());
  absl::StatusOr<T> result = body(c);
  // A connection the database dropped while it sat idle (a restart, a
  // failover, an idle timeout) shows only when used; a read may be repeated.
  if (!result.ok() && c.broken()) {
    FT_RETURN_IF_ERROR(c.Reset());
    result = body(c);
  }
  return result;
}

template <typename T, typename F>
absl::StatusOr<T> PostgresJobStore::InTransaction(F body) {
  FT_ASSIGN_OR_RETURN(Connection c, Borrow());
  absl::Status begin = c.Run("BEGIN");
  // As in Read, but only BEGIN may be repeated: nothing has happened yet.
  if (!begin.ok() && c.broken()) {
    FT_RETURN_IF_ERROR(c.Reset());
    begin = c.Run("BEGIN");
  }
  FT_RETURN_IF_ERROR(begin);
  absl::StatusOr<T> result = body(c);
  if (!result.ok()) {
    (void)c.Run("ROLLBACK");
    return result;
  }
  FT_RETURN_IF_ERROR(c.Run("COMMIT"));
  return result;
}

absl::Status PostgresJobStore::Migrate() {
  while (true) {
    // One migration a transaction; the version it reached, 0 when none was due.
    FT_ASSIGN_OR_RETURN(int applied, InTransaction<int>([&](Connection& c) -> absl::StatusOr<int> {
      // Replicas starting at once queue here, and each finds what the one
      // before it applied.
      FT_RETURN_IF_ERROR(c.Run("SELECT pg_advisory_xact_lock($1)", Params().Add(kMigrationLock)));
      FT_RETURN_IF_ERROR(c.RunScript(kMigrationsTable));
      FT_ASSIGN_OR_RETURN(Result r, c.Exec("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
      const int64_t current = r.Int(0, 0);
      if (current > kSchemaVersion) {
        return absl::FailedPreconditionError(absl::StrCat(
            "the database at ", shown_url_, " has schema version ", current, ", newer than this finetuned's ",
            kSchemaVersion, ": run a finetuned at least as new as the one that upgraded it"));
      }
      if (current == kSchemaVersion) return 0;
      const Migration& next = kMigrations[current];
      FT_RETURN_IF_ERROR(c.RunScript(next.sql));
      FT_RETURN_IF_ERROR(c.Run("INSERT INTO schema_migrations(version) VALUES ($1)", Params().Add(next.version)));
      return next.version;
    }));
    if (applied == 0) return absl::OkStatus();
    util::Log("info", "finetuned", "database schema migrated",
              {{"version", absl::StrCat(applied)}, {"database", shown_url_}});
  }
}

absl::StatusOr<pb::Job> PostgresJobStore::LoadJob(Connection& c, const std::string& job_id, bool lock) {
  static const std::string kSelect = absl::StrCat("SELECT ", kJobColumns, " FROM jobs WHERE id = $1");
  static const std::string kSelectForUpdate = absl::StrCat(kSelect, " FOR UPDATE");
  FT_ASSIGN_OR_RETURN(Result r, c.Exec((lock ? kSelectForUpdate : kSelect).c_str(), Params().Add(job_id)));
  if (r.rows() == 0) return NoSuchJob(job_id);
  return JobFromResult(r, 0);
}

absl::Status PostgresJobStore::CheckLeaseOn(Connection& c, const std::string& job_id, const std::string& lease_id,
                                            bool lock) {
  FT_ASSIGN_OR_RETURN(Result r, c.Exec(lock ? "SELECT state, lease_id FROM jobs WHERE id = $1 FOR UPDATE"
                                            : "SELECT state, lease_id FROM jobs WHERE id = $1",
                                       Params().Add(job_id)));
  if (r.rows() == 0) return NoSuchJob(job_id);
  return CheckLeaseHolds(job_id, lease_id, r.Int(0, 0), r.Text(0, 1));
}

absl::StatusOr<pb::JobEvent> PostgresJobStore::AppendEventLocked(Connection& c, const std::string& job_id,
                                                                 pb::JobEvent event) {
  // The UPDATE locks the job's row until commit: concurrent appends, from
  // any process, take numbers one after another, and a rolled-back one
  // leaves no gap.
  FT_ASSIGN_OR_RETURN(Result q, c.Exec("UPDATE jobs SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
                                       Params().Add(job_id)));
  if (q.rows() == 0) return NoSuchJob(job_id);
  StampEvent(job_id, q.Int(0, 0), clock_->Now(), &event);
  FT_RETURN_IF_ERROR(c.Run("INSERT INTO events(job_id, seq, data) VALUES ($1, $2, $3)",
                           Params().Add(job_id).Add(event.sequence()).AddBytes(event.SerializeAsString())));
  // Inside the transaction: listeners hear of it when, and only if, it
  // commits, so a woken watcher always finds the event in the table.
  // Also a group's start: its other ranks, waiting on any replica, look
  // for the ranks it gave them.
  const bool queued = event.has_state_changed() && (event.state_changed().state() == pb::QUEUED ||
                                                    event.state_changed().workers_size() > 1);
  FT_RETURN_IF_ERROR(c.Run("SELECT pg_notify($1, $2)",
                           Params().Add(std::string(kChangeChannel))
                               .Add(absl::StrCat(job_id, ":", event.sequence(), queued ? kQueuedSuffix : ""))));
  return event;
}

absl::Status PostgresJobStore::StartChangeFeed(ChangeFn on_change, std::function<void()> on_resync) {
  if (feed_.joinable()) return absl::FailedPreconditionError("the job store's change feed runs already");
  {
    absl::MutexLock lock(&feed_mu_);
    feed_stopping_ = false;
  }
  feed_ = std::thread([this, on_change = std::move(on_change), on_resync = std::move(on_resync)] {
    FeedLoop(on_change, on_resync);
  });
  return absl::OkStatus();
}

void PostgresJobStore::StopChangeFeed() {
  {
    absl::MutexLock lock(&feed_mu_);
    feed_stopping_ = true;
  }
  if (feed_.joinable()) feed_.join();
}

bool PostgresJobStore::FeedStopping(absl::Duration timeout) {
  absl::MutexLock lock(&feed_mu_);
  return feed_mu_.AwaitWithTimeout(absl::Condition(&feed_stopping_), timeout);
}

bool PostgresJobStore::DrainNotifications(PGconn* conn, const ChangeFn& on_change) {
  if (PQconsumeInput(conn) == 0) return false;
  while (PGnotify* n = PQnotifies(conn)) {
    // "<job_id>:<sequence>[:queued]"; job ids hold no ':'.
    const absl::string_view payload(n->extra);
    const std::string job_id(payload.substr(0, payload.find(':')));
    const bool queued = absl::EndsWith(payload, kQueuedSuffix);
    PQfreemem(n);
    if (!job_id.empty()) on_change(job_id, queued);
  }
  return PQstatus(conn) == CONNECTION_OK;
}

void PostgresJobStore::FeedLoop(const ChangeFn& on_change, const std::function<void()>& on_resync) {
  // How long one wait for input lasts: how quickly StopChangeFeed returns.
  constexpr absl::Duration kPollSlice = absl::Milliseconds(200);
  // An idle connection is checked this often, since a database host that
  // vanished (rather than closing the socket) would otherwise go unnoticed.
  constexpr absl::Duration kKeepalive = absl::Seconds(5);
  bool connected_before = false;
  bool reported_down = false;
  while (!FeedStopping(absl::ZeroDuration())) {
    absl::StatusOr<PGconn*> opened = Connect();
    if (opened.ok()) {
      PGconn* candidate = *opened;
      PGresult* listen = PQexec(candidate, absl::StrCat("LISTEN ", kChangeChannel).c_str());
      if (PQresultStatus(listen) != PGRES_COMMAND_OK) {
        opened = QueryError(candidate, listen);
        PQfinish(candidate);
      }
      PQclear(listen);
    }
    if (!opened.ok()) {
      if (!reported_down) {
        util::Log("warning", "finetuned", "job change feed cannot listen; retrying every second",
                  {{"error", Scrub(std::string(opened.status().message()))}});
        reported_down = true;
      }
      if (FeedStopping(absl::Seconds(1))) return;
      continue;
    }
    PGconn* conn = *opened;
    if (connected_before || reported_down) {
      util::Log("info", "finetuned", "job change feed listening again");
      // Whatever was notified while no one listened is lost: all watchers
      // read the store again.
      on_resync();
    }
    connected_before = true;
    reported_down = false;
    absl::Time last_check = absl::Now();
    bool healthy = true;
    while (healthy && !FeedStopping(absl::ZeroDuration())) {
      pollfd fd{PQsocket(conn), POLLIN, 0};
      const int ready = ::poll(&fd, 1, static_cast<int>(absl::ToInt64Milliseconds(kPollSlice)));
      if (ready < 0 && errno != EINTR) healthy = false;
      if (ready > 0) healthy = DrainNotifications(conn, on_change);
      if (healthy && absl::Now() - last_check >= kKeepalive) {
        PGresult* ping = PQexec(conn, "SELECT 1");
        healthy = PQresultStatus(ping) == PGRES_TUPLES_OK;
        PQclear(ping);
        // Notifications that arrived with the answer wait in libpq.
        if (healthy) healthy = DrainNotifications(conn, on_change);
        last_check = absl::Now();
      }
    }
    PQfinish(conn);
    if (!healthy) {
      util::Log("warning", "finetuned", "job change feed lost its connection; reconnecting");
    }
  }
}

absl::StatusOr<pb::Job> PostgresJobStore::CreateJob(const pb::ResolvedJob& job, const std::string& request_id) {
  return InTransaction<pb::Job>([&](Connection& c) -> absl::StatusOr<pb::Job> {
    const std::string id = NewStoreId("job-");
    Params insert;
    insert.Add(id);
    if (request_id.empty()) {
      insert.AddNull();
    } else {
      insert.Add(request_id);
    }
    insert.Add(pb::QUEUED)
        .Add(job.spec().priority())
        .AddBytes(job.SerializeAsString())
        .Add(ToMicros(clock_->Now()))
        .Add(util::TenantOrDefault(job.tenant()))
        .Add(WorkersNeeded(job));
    // ON CONFLICT: the same request_id from another replica at the same
    // moment waits for that insert, then finds its job below.
    FT_ASSIGN_OR_RETURN(Result inserted,
                        c.Exec("INSERT INTO jobs(id, request_id, state, priority, resolved, create_us, tenant, workers) "
                               "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (request_id) DO NOTHING RETURNING id",
                               insert));
    if (inserted.rows() == 0) {
      FT_ASSIGN_OR_RETURN(Result s, c.Exec("SELECT id FROM jobs WHERE request_id = $1", Params().Add(request_id)));
      if (s.rows() == 0) return absl::InternalError(absl::StrCat("request ", request_id, " vanished"));
      return LoadJob(c, s.Text(0, 0));
    }
    FT_RETURN_IF_ERROR(AppendEventLocked(c, id, StateChangedEvent(pb::QUEUED, "queued", 0, "", "")).status());
    return LoadJob(c, id);
  });
}

absl::StatusOr<pb::Job> PostgresJobStore::GetJob(const std::string& job_id) {
  return Read<pb::Job>([&](Connection& c) { return LoadJob(c, job_id); });
}

absl::StatusOr<std::vector<pb::Job>> PostgresJobStore::ListJobs(const std::vector<pb::JobState>& states, int limit,
                                                                const std::string& tenant) {
  std::vector<std::string> numbers;
  for (pb::JobState s : states) numbers.push_back(absl::StrCat(static_cast<int>(s)));
  static const std::string kSelect =
      absl::StrCat("SELECT ", kJobColumns,
                   " FROM jobs WHERE (cardinality($1::integer[]) = 0 OR state = ANY($1::integer[])) "
                   "AND ($2::text = '' OR tenant = $2::text) ORDER BY n DESC LIMIT $3");
  // The states as an array literal, "{1,3}": numbers only.
  const Params params = Params().Add(absl::StrCat("{", absl::StrJoin(numbers, ","), "}")).Add(tenant).AddLimit(limit);
  return Read<std::vector<pb::Job>>([&](Connection& c) -> absl::StatusOr<std::vector<pb::Job>> {
    FT_ASSIGN_OR_RETURN(Result r, c.Exec(kSelect.c_str(), params));
    std::vector<pb::Job> out;
    for (int i = 0; i < r.rows(); ++i) {
      FT_ASSIGN_OR_RETURN(pb::Job job, JobFromResult(r, i));
      out.push_back(std::move(job));
    }
    return out;
  });
}

template <typename P>
absl::StatusOr<int> PostgresJobStore::Count(const char* sql, const P& params) {
  return Read<int>([&](Connection& c) -> absl::StatusOr<int> {
    FT_ASSIGN_OR_RETURN(Result r, c.Exec(sql, params));
    return r.rows() > 0 ? static_cast<int>(r.Int(0, 0)) : 0;
  });
}

absl::StatusOr<int> PostgresJobStore::QueuePosition(const std::string& job_id) {
  return Count(
      "SELECT COUNT(*) FROM jobs q, jobs j WHERE j.id = $1 AND j.state = $2 AND q.state = $2 "
      "AND (q.priority > j.priority OR (q.priority = j.priority AND q.n <= j.n))",
      Params().Add(job_id).Add(pb::QUEUED));
}

absl::StatusOr<int> PostgresJobStore::CountActive(const std::string& tenant) {
  return Count("SELECT COUNT(*) FROM jobs WHERE tenant = $1 AND state IN ($2, $3)",
                     Params().Add(tenant).Add(pb::QUEUED).Add(pb::RUNNING));
}

absl::StatusOr<int> PostgresJobStore::CountInState(pb::JobState state) {
  return Count("SELECT COUNT(*) FROM jobs WHERE state = $1", Params().Add(state));
}

// The rank another worker's lease gave `worker_id` (its waiting row, locked
// by the caller's transaction), taken: the row is deleted, and the lease
// returned if the job still runs on that group.
absl::StatusOr<std::optional<LeasedJob>> PostgresJobStore::TakeRank(Connection& c, const std::string& worker_id, absl::Duration ttl) {
  FT_ASSIGN_OR_RETURN(Result w, c.Exec("DELETE FROM waiting_workers WHERE worker_id = $1 AND job_id <> '' "
                                       "RETURNING job_id, rank",
                                       Params().Add(worker_id)));
  if (w.rows() == 0) return std::optional<LeasedJob>();
  const std::string job_id = w.Text(0, 0);
  const int rank = static_cast<int>(w.Int(0, 1));
  FT_ASSIGN_OR_RETURN(Result j, c.Exec("SELECT state, lease_id, attempts, gang, resolved FROM jobs WHERE id = $1",
                                       Params().Add(job_id)));
  if (j.rows() == 0) return std::optional<LeasedJob>();
  return TakenRank(job_id, worker_id, rank, j.Int(0, 0), j.Text(0, 1), static_cast<int>(j.Int(0, 2)), j.Bytes(0, 3),
                   j.Bytes(0, 4), ttl);
}

absl::StatusOr<std::optional<LeasedJob>> PostgresJobStore::LeaseNext(const pb::WorkerInfo& worker, absl::Duration ttl,
                                                                     const ResumePointFn& resume_point,
                                                                     absl::Time waiting_until) {
  return InTransaction<std::optional<LeasedJob>>([&](Connection& c) -> absl::StatusOr<std::optional<LeasedJob>> {
    const int64_t now = ToMicros(clock_->Now());
    // Rows of workers that stopped waiting without saying so, and ranks
    // never taken. SKIP LOCKED: rows another lease holds are its business.
    FT_RETURN_IF_ERROR(c.Run("DELETE FROM waiting_workers WHERE worker_id IN (SELECT worker_id FROM waiting_workers "
                             "WHERE expires_us < $1 AND (job_id = '' OR expires_us < $2) FOR UPDATE SKIP LOCKED)",
                             Params().Add(now).Add(now - absl::ToInt64Microseconds(kUntakenRankGrace))));
    const bool gangs = CanJoinGang(worker);
    if (gangs) {
      // This worker's row, locked for the rest of the transaction: a lease
      // forming a group elsewhere either gave it a rank already (taken
      // now) or passes it over (SKIP LOCKED) until this one commits.
      FT_RETURN_IF_ERROR(c.Run("INSERT INTO waiting_workers(worker_id, device_kind, since_us, expires_us) "
                               "VALUES ($1, $2, $3, $4) ON CONFLICT (worker_id) DO UPDATE SET "
                               "device_kind = EXCLUDED.device_kind",
                               Params().Add(worker.worker_id()).Add(DeviceKind(worker)).Add(now).Add(now)));
      FT_ASSIGN_OR_RETURN(std::optional<LeasedJob> given, TakeRank(c, worker.worker_id(), ttl));
      if (given.has_value()) return given;
    }
    int64_t others_waiting = 0;
    if (gangs) {
      FT_ASSIGN_OR_RETURN(Result n, c.Exec("SELECT COUNT(*) FROM waiting_workers WHERE job_id = '' AND expires_us > $1 "
                                           "AND device_kind = $2 AND worker_id <> $3",
                                           Params().Add(now).Add(DeviceKind(worker)).Add(worker.worker_id())));
      others_waiting = n.Int(0, 0);
    }
    // SKIP LOCKED: a job that another replica or thread is leasing right
    // now is passed over, not waited for, so no job is leased twice and no
    // leaser queues behind another. A job needing more workers than wait
    // is passed over too (backfill).
    FT_ASSIGN_OR_RETURN(Result s, c.Exec("SELECT id, resolved, attempts, start_us, workers FROM jobs WHERE state = $1 "
                                         "AND workers <= $2 ORDER BY priority DESC, n ASC LIMIT 1 "
                                         "FOR UPDATE SKIP LOCKED",
                                         Params().Add(pb::QUEUED).Add(others_waiting + 1)));
    // Nothing for it: it waits (counting for others' groups) until
    // waiting_until, or leaves no row.
    auto wait = [&]() -> absl::StatusOr<std::optional<LeasedJob>> {
      if (gangs && waiting_until > clock_->Now()) {
        // (A row given a rank of a gone group was taken and deleted above.)
        FT_RETURN_IF_ERROR(c.Run("INSERT INTO waiting_workers(worker_id, device_kind, since_us, expires_us) "
                                 "VALUES ($1, $2, $3, $4) ON CONFLICT (worker_id) DO UPDATE SET "
                                 "expires_us = EXCLUDED.expires_us",
                                 Params().Add(worker.worker_id()).Add(DeviceKind(worker)).Add(now)
                                     .Add(ToMicros(waiting_until))));
      } else if (gangs) {
        FT_RETURN_IF_ERROR(c.Run("DELETE FROM waiting_workers WHERE worker_id = $1", Params().Add(worker.worker_id())));
      }
      return std::optional<LeasedJob>();
    };
    if (s.rows() == 0) return wait();
    LeasedJob leased;
    const std::string id = s.Text(0, 0);
    FT_ASSIGN_OR_RETURN(leased.job, ParseResolvedJob(id, s.Bytes(0, 1)));
    const int attempt = static_cast<int>(s.Int(0, 2)) + 1;
    const int64_t start = s.Int(0, 3) > 0 ? s.Int(0, 3) : now;
    const int needed = static_cast<int>(s.Int(0, 4));
    std::vector<std::string> others;
    if (needed > 1) {
      // The longest waiting first; rows other leases hold are passed over.
      FT_ASSIGN_OR_RETURN(Result o, c.Exec("SELECT worker_id FROM waiting_workers WHERE job_id = '' AND expires_us > $1 "
                                           "AND device_kind = $2 AND worker_id <> $3 ORDER BY since_us, worker_id "
                                           "LIMIT $4 FOR UPDATE SKIP LOCKED",
                                           Params().Add(now).Add(DeviceKind(worker)).Add(worker.worker_id())
                                               .Add(needed - 1)));
      for (int i = 0; i < o.rows(); ++i) others.push_back(o.Text(i, 0));
      if (static_cast<int>(others.size()) < needed - 1) return wait();
    }
    if (gangs) {
      FT_RETURN_IF_ERROR(c.Run("DELETE FROM waiting_workers WHERE worker_id = $1", Params().Add(worker.worker_id())));
    }
    const std::string lease_id = NewStoreId("lease-");
    const pb::Gang gang = needed > 1 ? FormGang(worker, others) : pb::Gang();
    Params update;
    update.Add(pb::RUNNING)
        .Add(attempt)
        .Add(start)
        .Add(worker.worker_id())
        .Add(lease_id)
        .Add(now + absl::ToInt64Microseconds(ttl));
    if (needed > 1) {
      update.AddBytes(gang.SerializeAsString());
    } else {
      update.AddNull();
    }
    update.Add(id);
    FT_RETURN_IF_ERROR(c.Run("UPDATE jobs SET state = $1, attempts = $2, start_us = $3, worker_id = $4, "
                             "lease_id = $5, lease_expires_us = $6, gang = $7 WHERE id = $8",
                             update));
    for (size_t r = 0; r < others.size(); ++r) {
      FT_RETURN_IF_ERROR(c.Run("UPDATE waiting_workers SET job_id = $1, rank = $2 WHERE worker_id = $3",
                               Params().Add(id).Add(static_cast<int64_t>(r + 1)).Add(others[r])));
    }
    const ResumePoint resume = resume_point ? resume_point(id) : ResumePoint();
    pb::JobEvent running = StateChangedEvent(
        pb::RUNNING, needed > 1 ? GangRunningMessage(worker, gang, resume) : RunningMessage(worker, resume), attempt,
        worker.worker_id(), "", resume);
    if (needed > 1) *running.mutable_state_changed()->mutable_workers() = gang.workers();
    FT_RETURN_IF_ERROR(AppendEventLocked(c, id, std::move(running)).status());
    leased.lease = needed > 1 ? RankLease(id, lease_id, ttl, attempt, 0, gang) : NewLease(id, lease_id, ttl, attempt);
    return std::optional<LeasedJob>(std::move(leased));
  });
}

absl::StatusOr<std::optional<LeasedJob>> PostgresJobStore::StopWaiting(const pb::WorkerInfo& worker,
                                                                       absl::Duration ttl) {
  if (!CanJoinGang(worker)) return std::optional<LeasedJob>();
  return InTransaction<std::optional<LeasedJob>>([&](Connection& c) -> absl::StatusOr<std::optional<LeasedJob>> {
    FT_ASSIGN_OR_RETURN(std::optional<LeasedJob> given, TakeRank(c, worker.worker_id(), ttl));
    if (given.has_value()) return given;
    FT_RETURN_IF_ERROR(c.Run("DELETE FROM waiting_workers WHERE worker_id = $1", Params().Add(worker.worker_id())));
    return std::optional<LeasedJob>();
  });
}

absl::StatusOr<int> PostgresJobStore::CountWaiting() {
  return Read<int>([&](Connection& c) -> absl::StatusOr<int> {
    FT_ASSIGN_OR_RETURN(Result n, c.Exec("SELECT COUNT(*) FROM waiting_workers WHERE job_id = '' AND expires_us > $1",
                                         Params().Add(ToMicros(clock_->Now()))));
    return static_cast<int>(n.Int(0, 0));
  });
}

absl::StatusOr<int64_t> PostgresJobStore::QueuedWorkerDemand() {
  return Read<int64_t>([&](Connection& c) -> absl::StatusOr<int64_t> {
    FT_ASSIGN_OR_RETURN(Result n, c.Exec("SELECT COALESCE(SUM(workers), 0) FROM jobs WHERE state = $1",
                                         Params().Add(pb::QUEUED)));
    return n.Int(0, 0);
  });
}

absl::Status PostgresJobStore::CheckLease(const std::string& job_id, const std::string& lease_id) {
  return Read<bool>([&](Connection& c) -> absl::StatusOr<bool> {
           FT_RETURN_IF_ERROR(CheckLeaseOn(c, job_id, lease_id));
           return true;
         })
      .status();
}

absl::Status PostgresJobStore::ReleaseLease(const std::string& job_id, const std::string& lease_id) {
  return InTransaction<bool>([&](Connection& c) -> absl::StatusOr<bool> {
           FT_RETURN_IF_ERROR(CheckLeaseOn(c, job_id, lease_id, /*lock=*/true));
           FT_RETURN_IF_ERROR(c.Run("UPDATE jobs SET lease_expires_us = 0 WHERE id = $1", Params().Add(job_id)));
           return true;
         })
      .status();
}

absl::StatusOr<pb::Job> PostgresJobStore::ReturnJob(const std::string& job_id, const std::string& lease_id,
                                                    const std::string& reason) {
  return InTransaction<pb::Job>([&](Connection& c) -> absl::StatusOr<pb::Job> {
    FT_RETURN_IF_ERROR(CheckLeaseOn(c, job_id, lease_id, /*lock=*/true));
    FT_ASSIGN_OR_RETURN(pb::Job job, LoadJob(c, job_id));
    if (job.cancel_requested()) {
      FT_RETURN_IF_ERROR(
          c.Run("UPDATE jobs SET state = $1, lease_id = '', lease_expires_us = 0, end_us = $2 WHERE id = $3",
                Params().Add(pb::CANCELLED).Add(ToMicros(clock_->Now())).Add(job_id)));
      FT_RETURN_IF_ERROR(AppendEventLocked(c, job_id,
                                           StateChangedEvent(pb::CANCELLED, absl::StrCat("cancelled (", reason, ")"),
                                                             job.attempts(), job.worker_id(), ""))
                             .status());
      return LoadJob(c, job_id);
    }
    // Not a failure: the attempt is given back, so that preemptions never
    // use up --max-attempts.
    FT_RETURN_IF_ERROR(
        c.Run("UPDATE jobs SET state = $1, attempts = $2, lease_id = '', lease_expires_us = 0 WHERE id = $3",
              Params().Add(pb::QUEUED).Add(std::max(0, job.attempts() - 1)).Add(job_id)));
    FT_RETURN_IF_ERROR(AppendEventLocked(c, job_id,
                                         StateChangedEvent(pb::QUEUED, ReturnedMessage(job.worker_id(), reason),
                                                           job.attempts(), job.worker_id(), ""))
                           .status());
    return LoadJob(c, job_id);
  });
}

absl::StatusOr<pb::Job> PostgresJobStore::RenewLease(const std::string& job_id, const std::string& lease_id,
                                                     absl::Duration ttl) {
  return InTransaction<pb::Job>([&](Connection& c) -> absl::StatusOr<pb::Job> {
    FT_RETURN_IF_ERROR(CheckLeaseOn(c, job_id, lease_id, /*lock=*/true));
    FT_RETURN_IF_ERROR(
        c.Run("UPDATE jobs SET lease_expires_us = $1 WHERE id = $2",
              Params().Add(ToMicros(clock_->Now()) + absl::ToInt64Microseconds(ttl)).Add(job_id)));
    return LoadJob(c, job_id);
  });
}

absl::StatusOr<pb::Job> PostgresJobStore::FinishJob(const std::string& job_id, const std::string& lease_id,
                                                    const pb::JobResult& result) {
  if (!IsTerminal(result.state())) {
    return absl::InvalidArgumentError("a job result must be SUCCEEDED, FAILED or CANCELLED");
  }
  return InTransaction<pb::Job>([&](Connection& c) -> absl::StatusOr<pb::Job> {
    FT_RETURN_IF_ERROR(CheckLeaseOn(c, job_id, lease_id, /*lock=*/true));
    FT_ASSIGN_OR_RETURN(pb::Job job, LoadJob(c, job_id));
    FT_RETURN_IF_ERROR(c.Run("UPDATE jobs SET state = $1, error = $2, model_id = $3, metrics = $4, end_us = $5, "
                             "lease_id = '', lease_expires_us = 0 WHERE id = $6",
                             Params()
                                 .Add(result.state())
                                 .Add(result.error())
                                 .Add(result.model_id())
                                 .AddBytes(result.metrics().SerializeAsString())
                                 .Add(ToMicros(clock_->Now()))
                                 .Add(job_id)));
    FT_RETURN_IF_ERROR(AppendEventLocked(c, job_id,
                                         StateChangedEvent(result.state(), FinishedMessage(result), job.attempts(),
                                                           job.worker_id(), result.model_id()))
                           .status());
    return LoadJob(c, job_id);
  });
}

absl::StatusOr<pb::Job> PostgresJobStore::RequestCancel(const std::string& job_id) {
  return InTransaction<pb::Job>([&](Connection& c) -> absl::StatusOr<pb::Job> {
    FT_ASSIGN_OR_RETURN(pb::Job job, LoadJob(c, job_id, /*lock=*/true));
    if (job.state() == pb::QUEUED) {
      FT_RETURN_IF_ERROR(c.Run("UPDATE jobs SET state = $1, cancel_requested = true, end_us = $2 WHERE id = $3",
                               Params().Add(pb::CANCELLED).Add(ToMicros(clock_->Now())).Add(job_id)));
      FT_RETURN_IF_ERROR(AppendEventLocked(
                             c, job_id, StateChangedEvent(pb::CANCELLED, "cancelled while queued", job.attempts(), "", ""))
                             .status());
    } else if (job.state() == pb::RUNNING && !job.cancel_requested()) {
      FT_RETURN_IF_ERROR(c.Run("UPDATE jobs SET cancel_requested = true WHERE id = $1", Params().Add(job_id)));
      pb::JobEvent event;
      event.mutable_log()->set_level("info");
      event.mutable_log()->set_message("cancellation requested");
      FT_RETURN_IF_ERROR(AppendEventLocked(c, job_id, std::move(event)).status());
    }
    return LoadJob(c, job_id);
  });
}

absl::StatusOr<std::vector<ExpiredLease>> PostgresJobStore::ExpireLeases(int max_attempts) {
  return InTransaction<std::vector<ExpiredLease>>([&](Connection& c) -> absl::StatusOr<std::vector<ExpiredLease>> {
    const int64_t now = ToMicros(clock_->Now());
    // SKIP LOCKED: another replica's sweep, or a renewal in flight, has the
    // row; that one decides it.
    FT_ASSIGN_OR_RETURN(Result s, c.Exec("SELECT id, attempts, worker_id, cancel_requested FROM jobs "
                                         "WHERE state = $1 AND lease_expires_us < $2 FOR UPDATE SKIP LOCKED",
                                         Params().Add(pb::RUNNING).Add(now)));
    std::vector<ExpiredLease> out;
    for (int i = 0; i < s.rows(); ++i) {
      const std::string id = s.Text(i, 0);
      const int attempts = static_cast<int>(s.Int(i, 1));
      const std::string worker = s.Text(i, 2);
      const LeaseExpiry next = ExpireLease(worker, attempts, s.Bool(i, 3), max_attempts);
      FT_RETURN_IF_ERROR(c.Run("UPDATE jobs SET state = $1, error = $2, lease_id = '', lease_expires_us = 0, "
                               "end_us = $3 WHERE id = $4",
                               Params().Add(next.state).Add(next.error).Add(IsTerminal(next.state) ? now : 0).Add(id)));
      FT_RETURN_IF_ERROR(
          AppendEventLocked(c, id, StateChangedEvent(next.state, next.message, attempts, worker, "")).status());
      out.push_back({id, next.state});
    }
    return out;
  });
}

absl::StatusOr<pb::JobEvent> PostgresJobStore::AppendEvent(const std::string& job_id, const std::string& lease_id,
                                                           pb::JobEvent event) {
  if (event.has_state_changed()) {
    return absl::InvalidArgumentError("workers cannot append state changes");
  }
  return InTransaction<pb::JobEvent>([&](Connection& c) -> absl::StatusOr<pb::JobEvent> {
    FT_RETURN_IF_ERROR(CheckLeaseOn(c, job_id, lease_id, /*lock=*/true));
    return AppendEventLocked(c, job_id, std::move(event));
  });
}

absl::StatusOr<std::vector<pb::JobEvent>> PostgresJobStore::ReadEvents(const std::string& job_id,
                                                                       int64_t from_sequence, int limit) {
  return Read<std::vector<pb::JobEvent>>([&](Connection& c) -> absl::StatusOr<std::vector<pb::JobEvent>> {
    FT_ASSIGN_OR_RETURN(Result r, c.Exec("SELECT data FROM events WHERE job_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                                         Params().Add(job_id).Add(from_sequence).AddLimit(limit)));
    std::vector<pb::JobEvent> out;
    for (int i = 0; i < r.rows(); ++i) {
      pb::JobEvent e;
      if (!e.ParseFromString(r.Bytes(i, 0))) {
        return absl::DataLossError(absl::StrCat("corrupt event in job ", job_id));
      }
      out.push_back(std::move(e));
    }
    return out;
  });
}

absl::StatusOr<pb::ResolvedJob> PostgresJobStore::GetResolvedJob(const std::string& job_id) {
  return Read<pb::ResolvedJob>([&](Connection& c) -> absl::StatusOr<pb::ResolvedJob> {
    FT_ASSIGN_OR_RETURN(Result r, c.Exec("SELECT resolved FROM jobs WHERE id = $1", Params().Add(job_id)));
    if (r.rows() == 0) return NoSuchJob(job_id);
    return ParseResolvedJob(job_id, r.Bytes(0, 0));
  });
}

}  // namespace ft::server
