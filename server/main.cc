// finetuned: the server. Flags are read here and nowhere else; they become
// ServerOptions, and server/server.h does the rest.
#include <signal.h>

#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/util/files.h"
#include "common/util/flag_names.h"
#include "common/util/log.h"
#include "server/auth/rpc_table.h"
#include "server/server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "gRPC address; port 0 picks a free port");
ABSL_FLAG(std::string, port_file, "", "write the bound port here once serving");
ABSL_FLAG(std::string, data_dir, "./var", "the SQLite job store (without --database), models, checkpoints, uploads");
ABSL_FLAG(std::string, database, "",
          "the job store: empty for SQLite at <data-dir>/finetuned.db, or a PostgreSQL URL "
          "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?PARAM=VALUE...] (libpq's; PGPASSWORD or ~/.pgpass keep "
          "the password out of the command line). Jobs and events only: models, checkpoints and uploads stay in "
          "--data-dir");
ABSL_FLAG(std::string, replica_id, "",
          "this replica's name among several on one --database and --data-dir (default with PostgreSQL: "
          "<hostname>-<pid>; with SQLite: none)");
ABSL_FLAG(int, local_workers, 1, "local finetune-worker processes; 0 means external workers only");
ABSL_FLAG(std::string, dataset_roots, "",
          "comma-separated directories file:// datasets may be read from "
          "(default: <data-dir>/datasets and /usr/share/datasets)");
ABSL_FLAG(std::string, weights_dir, "", "where `pretrained` weights are looked up (default <data-dir>/weights)");
ABSL_FLAG(std::string, metrics_listen, "", "Prometheus endpoint host:port (GET /metrics); empty disables it");
ABSL_FLAG(int, worker_threads, 0, "--threads for each local worker (default: cores / local workers)");
ABSL_FLAG(std::string, worker_binary, "",
          "finetune-worker for local workers and for the validate/predict tool processes (default: next to "
          "finetuned)");
ABSL_FLAG(std::string, worker_device, "auto", "--device for local workers");
ABSL_FLAG(std::string, worker_c10d_host, "",
          "--c10d-host for local workers: where other workers reach them in multi-worker jobs (default: the "
          "hostname; none: single-worker jobs only)");
ABSL_FLAG(std::string, log_format, "text", "log lines on stderr: text or json");
ABSL_FLAG(int, lease_ttl_seconds, 30, "a job's lease expires this long after its worker's last heartbeat");
ABSL_FLAG(int, max_attempts, 3, "a job fails after its worker is lost this many times");
ABSL_FLAG(int64_t, max_dataset_bytes, int64_t{10} << 30, "largest dataset archive UploadDataset accepts");
ABSL_FLAG(int64_t, max_dataset_extracted_bytes, int64_t{64} << 30,
          "largest total a dataset archive may extract to (uploads and file:// archives)");
ABSL_FLAG(int64_t, max_dataset_entries, 1000000, "most entries a dataset archive may hold");
ABSL_FLAG(int, max_tool_processes, 2,
          "validate and predict tool processes that run at once (each loads LibTorch in a child process)");
ABSL_FLAG(int, max_queued_tools, 8,
          "validate/predict requests that may wait for a tool process; more are RESOURCE_EXHAUSTED");
ABSL_FLAG(int, drain_seconds, 0,
          "on SIGTERM, report NOT_SERVING for this long while still serving, before shutting down");
ABSL_FLAG(int, slow_threads, 4, "threads for slow calls (submit's dataset scan, upload commits)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve TLS (with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA bundle: require client certificates it signed (mTLS)");
ABSL_FLAG(std::string, auth_file, "",
          "JSON identities with token hashes and roles (docs/operations.md); re-read on SIGHUP. Empty: no "
          "authentication, loopback only unless --insecure");
ABSL_FLAG(std::string, audit_log, "", "append one JSON line per state-changing call to this file");
ABSL_FLAG(bool, insecure, false, "allow a non-loopback --listen without --auth-file and TLS");
ABSL_FLAG(bool, print_auth_table, false, "print which roles may call each RPC, then exit");

namespace {

int Run() {
  // Signals are handled by this thread with sigwait, so block them
  // everywhere (threads inherit the mask) before anything starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // A write past RLIMIT_FSIZE fails with EFBIG (reported, like a full disk)
  // instead of killing the server.
  signal(SIGXFSZ, SIG_IGN);

  ft::server::ServerOptions o;
  o.listen = absl::GetFlag(FLAGS_listen);
  o.data_dir = absl::GetFlag(FLAGS_data_dir);
  o.database = absl::GetFlag(FLAGS_database);
  o.replica_id = absl::GetFlag(FLAGS_replica_id);
  for (absl::string_view r : absl::StrSplit(absl::GetFlag(FLAGS_dataset_roots), ',', absl::SkipEmpty())) {
    o.dataset_roots.emplace_back(r);
  }
  o.weights_dir = absl::GetFlag(FLAGS_weights_dir);
  o.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  o.local_workers = absl::GetFlag(FLAGS_local_workers);
  o.worker_threads = absl::GetFlag(FLAGS_worker_threads);
  o.worker_binary = absl::GetFlag(FLAGS_worker_binary);
  o.worker_device = absl::GetFlag(FLAGS_worker_device);
  o.worker_c10d_host = absl::GetFlag(FLAGS_worker_c10d_host);
  o.lease_ttl = absl::Seconds(absl::GetFlag(FLAGS_lease_ttl_seconds));
  o.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  o.max_dataset_bytes = absl::GetFlag(FLAGS_max_dataset_bytes);
  o.max_dataset_extracted_bytes = absl::GetFlag(FLAGS_max_dataset_extracted_bytes);
  o.max_dataset_entries = absl::GetFlag(FLAGS_max_dataset_entries);
  o.max_tool_processes = absl::GetFlag(FLAGS_max_tool_processes);
  o.max_queued_tools = absl::GetFlag(FLAGS_max_queued_tools);
  o.slow_threads = absl::GetFlag(FLAGS_slow_threads);
  o.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  o.tls_key = absl::GetFlag(FLAGS_tls_key);
  o.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  o.auth_file = absl::GetFlag(FLAGS_auth_file);
  o.audit_log = absl::GetFlag(FLAGS_audit_log);
  o.insecure = absl::GetFlag(FLAGS_insecure);
  if (o.max_tool_processes < 1 || o.max_queued_tools < 0 || o.slow_threads < 1) {
    std::cerr << "finetuned: --max-tool-processes and --slow-threads must be >= 1, --max-queued-tools >= 0"
              << std::endl;
    return 2;
  }

  auto server = ft::server::Server::Create(o);
  if (!server.ok()) {
    std::cerr << "finetuned: " << server.status().message() << std::endl;
    return 1;
  }
  if (!absl::GetFlag(FLAGS_port_file).empty()) {
    if (auto s = ft::util::WriteFileAtomic(absl::GetFlag(FLAGS_port_file), absl::StrCat((*server)->port(), "\n"));
        !s.ok()) {
      std::cerr << "finetuned: " << s.message() << std::endl;
      return 1;
    }
  }
  int sig = 0;
  // SIGHUP re-reads the auth file (a revoked token stops working at once);
  // a bad file is logged and the identities in use stay.
  while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) {
    if (auto s = (*server)->ReloadAuth(); !s.ok()) {
      ft::util::Log("error", "finetuned", "auth file not reloaded; keeping the identities in use",
                    {{"error", std::string(s.message())}});
    }
  }
  ft::util::Log("info", "finetuned", "shutting down", {{"signal", absl::StrCat(sig)}});
  // NOT_SERVING first; a load balancer that polls readiness stops sending
  // calls during the grace, and the calls in flight still finish.
  (*server)->StartDraining();
  absl::SleepFor(absl::Seconds(absl::GetFlag(FLAGS_drain_seconds)));
  (*server)->Shutdown(absl::Now() + absl::Seconds(5));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("finetuned: the finetuned server. See README.md.");
  std::vector<std::string> args = ft::util::DashedFlagsToAbseil(argc, argv);
  std::vector<char*> argv2;
  for (auto& a : args) argv2.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(argv2.size()), argv2.data());
  ft::util::LogFormat format;
  if (!ft::util::ParseLogFormat(absl::GetFlag(FLAGS_log_format), &format)) {
    std::cerr << "finetuned: --log-format must be text or json" << std::endl;
    return 2;
  }
  ft::util::SetLogFormat(format);
  if (absl::GetFlag(FLAGS_print_auth_table)) {
    std::cout << ft::server::auth::RpcTableText();
    return 0;
  }
  return Run();
}
