// A real PostgreSQL for tests: one server per test binary, a fresh database
// per test. No fake: the tests of PostgresJobStore run against the same
// server binaries a deployment runs (Debian's postgresql package).
#ifndef FT_TESTS_UNIT_POSTGRES_FIXTURE_H_
#define FT_TESTS_UNIT_POSTGRES_FIXTURE_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gtest/gtest.h"

namespace ft::testing {

// A PostgreSQL server of this process's own: initdb in a fresh temporary
// folder, started with pg_ctl on a free loopback port (and a Unix socket in
// that folder), stopped and deleted by Stop() or the destructor. If the test
// process dies first (a crash, a CTest timeout's SIGKILL), a small reaper
// child it started stops the server and deletes the folder.
//
// PostgreSQL refuses to run as root: under root, every server command runs
// as the `postgres` user (runuser), which Debian's package creates.
//
// Trust authentication on loopback, except for members of the role
// kPasswordUsers, who must give their password (scram-sha-256).
class PostgresServer {
 public:
  static constexpr char kPasswordUsers[] = "ft_password_users";

  // Finds the server binaries ($FT_POSTGRES_BINDIR, `pg_config --bindir`,
  // /usr/lib/postgresql/*/bin) and starts a server. The error names the
  // command that failed, with its output and the server's log.
  static absl::StatusOr<std::unique_ptr<PostgresServer>> Start();
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  // Stops the server (pg_ctl stop -m fast) and deletes its folder.
  absl::Status Stop();

  int port() const { return port_; }
  // postgresql://USER[:PASSWORD]@127.0.0.1:PORT/DATABASE
  std::string Url(const std::string& database, const std::string& user = "postgres",
                  const std::string& password = "") const;
  // A new, empty database; returns its name.
  absl::StatusOr<std::string> CreateDatabase();
  // Runs `sql` (one or more statements) as the superuser in `database`;
  // the rows of the last statement, as text ("" for NULL).
  absl::StatusOr<std::vector<std::vector<std::string>>> Query(const std::string& database, const std::string& sql);

 private:
  PostgresServer() = default;

  absl::Status StartReaper();

  std::string bindir_;
  std::string dir_;  // holds data/, sock/ and log
  int port_ = 0;
  bool running_ = false;
  int databases_ = 0;
  int reaper_fd_ = -1;
  pid_t reaper_pid_ = -1;
};

// Starts the binary's PostgreSQL before its first test and stops it after
// the last. A server that cannot be found or started FAILS the run, with
// the reason, and so does every test that asks SharedPostgres() for it: it
// never skips. Register it in the test file:
// ::testing::AddGlobalTestEnvironment(new PostgresEnvironment).
class PostgresEnvironment : public ::testing::Environment {
 public:
  void SetUp() override;
  void TearDown() override;
};

// The server PostgresEnvironment started, or why there is none. Tests
// ASSERT_TRUE(server.ok()) << server.status().
absl::StatusOr<PostgresServer*> SharedPostgres();

}  // namespace ft::testing

#endif  // FT_TESTS_UNIT_POSTGRES_FIXTURE_H_
