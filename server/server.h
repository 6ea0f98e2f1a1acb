// The finetuned server as one object: built, started and stopped in one
// place, after TF Serving's model_servers/server.h. main.cc only turns flags
// into ServerOptions; tests build an in-process Server on port 0.
#ifndef FT_SERVER_SERVER_H_
#define FT_SERVER_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/util/clock.h"
#include "server/workers/tool_runner.h"

namespace ft::server {

struct ServerOptions {
  // gRPC address; port 0 picks a free port (see Server::port()).
  std::string listen = "127.0.0.1:50051";
  // Database, models, uploads, the local workers' work dirs.
  std::string data_dir = "./var";
  // The job store: empty for SQLite at <data_dir>/finetuned.db, or a
  // postgresql:// (postgres://) URL for that PostgreSQL database. Models,
  // checkpoints and uploads stay in data_dir either way.
  std::string database;
  // This replica's name among several sharing one database and data_dir:
  // [A-Za-z0-9._-]{1,64}. It keeps what each replica writes apart: its local
  // workers are "<replica_id>-local-<i>", with work dirs under
  // <data_dir>/work/<replica_id>/, and its unfinished uploads lie in staging
  // names of its own, which only it cleans up at start. Empty: with a
  // PostgreSQL `database`, "<hostname>-<pid>" (in a Kubernetes pod, the pod
  // name and pid 1, so stable across restarts); with SQLite, none, and the
  // workers stay "local-<i>", as a single server needs nothing more.
  std::string replica_id;
  // The only places file:// datasets may be read from; empty means
  // <data_dir>/datasets and /usr/share/datasets.
  std::vector<std::string> dataset_roots;
  // Where `pretrained` weights are looked up; empty means <data_dir>/weights.
  std::string weights_dir;
  // Prometheus text endpoint (host:port); empty disables it.
  std::string metrics_listen;

  // TLS: a PEM certificate chain and key serve TLS; a client CA also
  // requires client certificates it signed (mTLS).
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // Identities and their token hashes (server/auth/auth_file.h); empty: no
  // authentication, every call is "anonymous", an admin of tenant "default".
  std::string auth_file;
  // One JSON line per state-changing call; empty: none.
  std::string audit_log;
  // Serve a non-loopback address without --auth-file and TLS. Off, such a
  // listen address is refused: anyone who can reach it would be admin.
  bool insecure = false;

  // Local finetune-worker processes the server starts and restarts.
  int local_workers = 1;
  // --threads for each local worker and for tool processes; 0 divides the
  // machine's cores among the local workers.
  int worker_threads = 0;
  // The finetune-worker binary (local workers and tool processes); empty
  // means the one next to the running executable.
  std::string worker_binary;
  std::string worker_device = "auto";
  // --c10d-host for local workers (multi-worker jobs); empty: theirs (the
  // hostname).
  std::string worker_c10d_host;

  absl::Duration lease_ttl = absl::Seconds(30);
  int max_attempts = 3;

  int64_t max_dataset_bytes = int64_t{10} << 30;
  int64_t max_dataset_extracted_bytes = int64_t{64} << 30;
  int64_t max_dataset_entries = 1000000;

  // Threads for calls too slow for gRPC's callback threads (SubmitJob's
  // dataset scan, upload commits, ValidateJob's pre-flight).
  int slow_threads = 4;
  // Threads that read the event log for WatchJob streams.
  int watch_threads = 2;
  // ValidateJob and Predict run as tool processes: at most this many at
  // once, and this many more waiting; past that, RESOURCE_EXHAUSTED.
  int max_tool_processes = 2;
  int max_queued_tools = 8;

  // Not owned; for tests. Null: the real clock.
  util::Clock* clock = nullptr;
  // Not owned; for tests. Null: `finetune-worker --tool` processes.
  ToolRunner* tool_runner = nullptr;
};

// Owns every part of a running server: the stores, the job manager, the
// executors, the gRPC server, the local workers and the metrics endpoint.
// Thread-safe.
class Server {
 public:
  // Opens the stores under data_dir, starts serving (health SERVING once
  // everything is up) and starts the local workers. INVALID_ARGUMENT or
  // FAILED_PRECONDITION naming the problem (a missing worker binary, a port
  // that cannot be bound, an unusable data dir).
  static absl::StatusOr<std::unique_ptr<Server>> Create(const ServerOptions& options);
  // Shuts down (with a 5 s grace) unless Shutdown ran.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound port.
  int port() const;
  // "127.0.0.1:<port>": where local clients reach it.
  std::string local_address() const;
  // Re-reads the auth file (SIGHUP). On an error the identities in use stay,
  // and the error (naming the file and entry) is returned for the log.
  absl::Status ReloadAuth();
  // Blocks until Shutdown has finished.
  void Wait();
  // Health turns NOT_SERVING (readiness probes take the server out of
  // rotation) while every call is still served; liveness stays SERVING.
  void StartDraining();
  // StartDraining, then the local workers stop, in-flight calls get until
  // `deadline`, and everything stops and joins. Idempotent.
  void Shutdown(absl::Time deadline);

 private:
  struct Parts;
  explicit Server(std::unique_ptr<Parts> parts);

  std::unique_ptr<Parts> parts_;
  absl::Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ft::server

#endif  // FT_SERVER_SERVER_H_
