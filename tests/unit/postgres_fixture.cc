#include "tests/unit/postgres_fixture.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace ft::testing {
namespace {

namespace fs = std::filesystem;

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs argv[0] (looked up on PATH) in `cwd` with stdin from /dev/null, and
// collects its output. Every descriptor this process opens is close-on-exec,
// so the servers pg_ctl starts hold none of ours.
CommandResult RunCommand(const std::vector<std::string>& args, const std::string& cwd) {
  CommandResult result;
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) {
    result.output = absl::StrCat("pipe: ", std::strerror(errno));
    return result;
  }
  const pid_t pid = fork();
  if (pid == 0) {
    const int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(out[1], 1);
    dup2(out[1], 2);
    if (chdir(cwd.c_str()) != 0) _exit(126);
    execvp(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  if (pid < 0) {
    close(out[0]);
    result.output = absl::StrCat("fork: ", std::strerror(errno));
    return result;
  }
  char buf[4096];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) result.output.append(buf, static_cast<size_t>(n));
  }
  close(out[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (result.exit_code == 127) absl::StrAppend(&result.output, "(could not run ", args[0], ")");
  return result;
}

std::string Shown(const std::vector<std::string>& args) { return absl::StrJoin(args, " "); }

absl::Status CommandFailed(const std::vector<std::string>& args, const CommandResult& r,
                           const std::string& extra = "") {
  return absl::InternalError(absl::StrCat("`", Shown(args), "` exited ", r.exit_code, ":\n", r.output, extra));
}

bool IsRoot() { return geteuid() == 0; }

// PostgreSQL refuses to run as root; so do initdb and pg_ctl.
std::vector<std::string> AsServerUser(std::vector<std::string> args) {
  if (IsRoot()) args.insert(args.begin(), {"runuser", "-u", "postgres", "--"});
  return args;
}

bool HasInitdb(const std::string& dir) { return !dir.empty() && fs::exists(fs::path(dir) / "initdb"); }

// The folder of initdb, pg_ctl and postgres.
absl::StatusOr<std::string> FindBindir() {
  std::vector<std::string> tried;
  if (const char* env = std::getenv("FT_POSTGRES_BINDIR"); env != nullptr && *env != '\0') {
    if (HasInitdb(env)) return std::string(env);
    return absl::NotFoundError(absl::StrCat("$FT_POSTGRES_BINDIR (", env, ") holds no initdb"));
  }
  tried.push_back("$FT_POSTGRES_BINDIR (unset)");
  const CommandResult pg_config = RunCommand({"pg_config", "--bindir"}, "/");
  const std::string from_pg_config(absl::StripAsciiWhitespace(pg_config.output));
  if (pg_config.exit_code == 0 && HasInitdb(from_pg_config)) return from_pg_config;
  tried.push_back(absl::StrCat("`pg_config --bindir` (", pg_config.exit_code == 0 ? from_pg_config : "failed", ")"));
  // Debian installs each major version beside the others: take the newest.
  std::vector<std::pair<int, std::string>> versions;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/usr/lib/postgresql", ec)) {
    int major = 0;
    if (absl::SimpleAtoi(entry.path().filename().string(), &major) && HasInitdb(entry.path() / "bin")) {
      versions.emplace_back(major, (entry.path() / "bin").string());
    }
  }
  if (!versions.empty()) return std::max_element(versions.begin(), versions.end())->second;
  tried.push_back("/usr/lib/postgresql/*/bin");
  return absl::NotFoundError(absl::StrCat("no PostgreSQL server binaries (initdb) found; tried ",
                                          absl::StrJoin(tried, ", "),
                                          ". Install Debian's postgresql package (dev.sh TEST_PACKAGES)"));
}

// A loopback port nothing listens on now (the kernel's pick for port 0).
absl::StatusOr<int> FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string error = std::strerror(errno);
    close(fd);
    return absl::InternalError(absl::StrCat("bind 127.0.0.1:0: ", error));
  }
  close(fd);
  return ntohs(addr.sin_port);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The environment's server, or why it did not start.
absl::StatusOr<std::unique_ptr<PostgresServer>>& Shared() {
  static auto* server = new absl::StatusOr<std::unique_ptr<PostgresServer>>(
      absl::FailedPreconditionError("PostgresEnvironment is not registered, or has not started yet"));
  return *server;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresServer>> PostgresServer::Start() {
  std::unique_ptr<PostgresServer> server(new PostgresServer());
  auto bindir = FindBindir();
  if (!bindir.ok()) return bindir.status();
  server->bindir_ = *bindir;
  const std::string initdb = server->bindir_ + "/initdb", pg_ctl = server->bindir_ + "/pg_ctl";

  std::string pattern = (fs::temp_directory_path() / absl::StrCat("ft-pg-", getpid(), "-XXXXXX")).string();
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", pattern, ": ", std::strerror(errno)));
  }
  server->dir_ = pattern;
  fs::create_directories(server->dir_ + "/sock");
  if (IsRoot()) {
    const passwd* pw = getpwnam("postgres");
    if (pw == nullptr) {
      return absl::FailedPreconditionError(
          "running as root, and PostgreSQL refuses to: there is no `postgres` user to run it as (Debian's "
          "postgresql package creates it)");
    }
    for (const std::string& p : {server->dir_, server->dir_ + "/sock"}) {
      if (chown(p.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
        return absl::InternalError(absl::StrCat("chown ", p, " to postgres: ", std::strerror(errno)));
      }
    }
  }
  // The reaper first: from here on a dying test process leaves nothing.
  if (absl::Status s = server->StartReaper(); !s.ok()) return s;

  const std::vector<std::string> init =
      AsServerUser({initdb, "-D", server->dir_ + "/data", "-A", "trust", "-U", "postgres", "-E", "UTF8",
                    "--no-locale", "--no-sync"});
  if (CommandResult r = RunCommand(init, server->dir_); r.exit_code != 0) return CommandFailed(init, r);
  {
    // Overwrites initdb's file, which keeps its owner (postgres).
    std::ofstream hba(server->dir_ + "/data/pg_hba.conf", std::ios::trunc);
    hba << "local all all trust\n"
        << "host all +" << kPasswordUsers << " 127.0.0.1/32 scram-sha-256\n"
        << "host all all 127.0.0.1/32 trust\n";
    if (!hba) return absl::InternalError("cannot write pg_hba.conf");
  }

  // Another process may take the free port before the server binds it:
  // try a few.
  CommandResult last;
  std::vector<std::string> start;
  for (int attempt = 0; attempt < 3 && !server->running_; ++attempt) {
    auto port = FreePort();
    if (!port.ok()) return port.status();
    server->port_ = *port;
    // fsync off: a test server that loses data in a power cut loses
    // nothing anyone needs, and on a busy CI machine every commit's fsync
    // would cost more than the test.
    start = AsServerUser({pg_ctl, "-D", server->dir_ + "/data", "-l", server->dir_ + "/log", "-w", "-t", "120", "-o",
                          absl::StrCat("-p ", server->port_, " -k '", server->dir_,
                                       "/sock' -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"),
                          "start"});
    last = RunCommand(start, server->dir_);
    server->running_ = last.exit_code == 0;
  }
  if (!server->running_) {
    return CommandFailed(start, last, absl::StrCat("\nserver log:\n", ReadFile(server->dir_ + "/log")));
  }
  auto roles = server->Query("postgres", absl::StrCat("CREATE ROLE ", kPasswordUsers));
  if (!roles.ok()) return roles.status();
  return server;
}

absl::Status PostgresServer::StartReaper() {
  // The reaper reads a pipe whose other end only this process holds: it
  // sees end-of-file when this process exits, however it exits. Stop()
  // leaves it nothing to do; otherwise it stops the server and deletes the
  // folder.
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  std::vector<std::string> args = {
      "/bin/sh", "-c",
      "dir=$1; shift; cat >/dev/null; "
      "if [ -f \"$dir/data/postmaster.pid\" ]; then \"$@\" -D \"$dir/data\" stop -m immediate; fi; rm -rf \"$dir\"",
      "ft-postgres-reaper", dir_};
  for (const std::string& a : AsServerUser({bindir_ + "/pg_ctl"})) args.push_back(a);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    // Its own session: a signal to the test's process group spares it.
    setsid();
    const int null = open("/dev/null", O_WRONLY);
    dup2(fds[0], 0);
    dup2(null, 1);
    dup2(null, 2);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[0]);
  if (pid < 0) {
    close(fds[1]);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  reaper_fd_ = fds[1];
  reaper_pid_ = pid;
  return absl::OkStatus();
}

PostgresServer::~PostgresServer() { (void)Stop(); }

absl::Status PostgresServer::Stop() {
  absl::Status status;
  if (running_) {
    const std::vector<std::string> stop = AsServerUser({bindir_ + "/pg_ctl", "-D", dir_ + "/data", "-m", "fast",
                                                        "-w", "stop"});
    if (CommandResult r = RunCommand(stop, "/"); r.exit_code != 0) status = CommandFailed(stop, r);
    running_ = false;
  }
  if (!dir_.empty() && status.ok()) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
    dir_.clear();
  }
  if (reaper_fd_ >= 0) {
    // It exits at once (or, had the stop failed, stops the server itself).
    close(reaper_fd_);
    reaper_fd_ = -1;
    while (waitpid(reaper_pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  return status;
}

std::string PostgresServer::Url(const std::string& database, const std::string& user,
                                const std::string& password) const {
  return absl::StrCat("postgresql://", user, password.empty() ? "" : ":", password, "@127.0.0.1:", port_, "/",
                      database);
}

absl::StatusOr<std::string> PostgresServer::CreateDatabase() {
  const std::string name = absl::StrCat("ft_test_", ++databases_);
  auto created = Query("postgres", absl::StrCat("CREATE DATABASE ", name));
  if (!created.ok()) return created.status();
  return name;
}

absl::StatusOr<std::vector<std::vector<std::string>>> PostgresServer::Query(const std::string& database,
                                                                            const std::string& sql) {
  PGconn* conn = PQconnectdb(Url(database).c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    const std::string error = PQerrorMessage(conn);
    PQfinish(conn);
    return absl::UnavailableError(absl::StrCat("connect to ", Url(database), ": ", error));
  }
  PQsetNoticeProcessor(
      conn, [](void*, const char*) {}, nullptr);
  PGresult* r = PQexec(conn, sql.c_str());
  const ExecStatusType status = PQresultStatus(r);
  absl::StatusOr<std::vector<std::vector<std::string>>> out;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    out = absl::InternalError(absl::StrCat(sql, ": ", PQresultErrorMessage(r)));
  } else {
    out.emplace();
    for (int i = 0; i < PQntuples(r); ++i) {
      std::vector<std::string> row;
      for (int j = 0; j < PQnfields(r); ++j) row.emplace_back(PQgetvalue(r, i, j));
      out->push_back(std::move(row));
    }
  }
  PQclear(r);
  PQfinish(conn);
  return out;
}

void PostgresEnvironment::SetUp() {
  Shared() = PostgresServer::Start();
  // Not fatal here, so that the tests run: each one that needs the server
  // fails with this reason, and the rest pass or fail on their own.
  if (!Shared().ok()) ADD_FAILURE() << "PostgreSQL for the tests did not start: " << Shared().status();
}

void PostgresEnvironment::TearDown() {
  if (!Shared().ok()) return;
  absl::Status stopped = (*Shared())->Stop();
  Shared() = absl::FailedPreconditionError("PostgreSQL for the tests was stopped");
  if (!stopped.ok()) ADD_FAILURE() << "PostgreSQL for the tests did not stop: " << stopped;
}

absl::StatusOr<PostgresServer*> SharedPostgres() {
  if (!Shared().ok()) {
    return absl::Status(Shared().status().code(),
                        absl::StrCat("PostgreSQL for the tests did not start: ", Shared().status().message()));
  }
  return Shared()->get();
}

}  // namespace ft::testing
