#ifndef FT_SERVER_WORKERS_LOCAL_WORKER_POOL_H_
#define FT_SERVER_WORKERS_LOCAL_WORKER_POOL_H_

#include <sys/types.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/util/clock.h"

namespace ft::server {

struct LocalWorkerPoolOptions {
  // Path of the finetune-worker binary.
  std::string worker_binary;
  // Address the workers dial (the server's own port on loopback).
  std::string server_address;
  int count = 1;
  // --threads for each worker; 0 lets the worker decide.
  int threads_per_worker = 0;
  // Each worker gets <work_root>/worker-<i> as its --work-dir.
  std::string work_root;
  // Worker i's --worker-id is "<worker_id_prefix>local-<i>": a replica's
  // id and a dash, so that replicas sharing a database never lease under
  // one name.
  std::string worker_id_prefix;
  // Extra arguments for every worker (e.g. --device=cpu).
  std::vector<std::string> extra_args;
  // NAME=value entries added to (or replacing those in) the server's
  // environment for every worker: the workers' token and TLS settings.
  // Secrets travel here, never in argv, which `ps` shows to every user.
  std::vector<std::string> env;
  // Restart backoff grows from `min_backoff` to `max_backoff`.
  absl::Duration min_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Seconds(30);
  // A worker that ran this long before it died was not crash-looping (it was
  // killed, or its job crashed it, which --max-attempts bounds): it comes
  // back after min_backoff, so that its job resumes soon.
  absl::Duration stable_after = absl::Seconds(5);
  // Not owned; the real clock when null. Times the restart backoff.
  util::Clock* clock = nullptr;
};

// Spawns finetune-worker processes and restarts any that die. A worker that
// dies loses nothing: the server re-queues its job when the stream breaks.
// Thread-safe. Owns its monitor thread; Stop() terminates the workers
// (SIGTERM, then SIGKILL) and joins it.
class LocalWorkerPool {
 public:
  explicit LocalWorkerPool(const LocalWorkerPoolOptions& options);
  ~LocalWorkerPool();
  LocalWorkerPool(const LocalWorkerPool&) = delete;
  LocalWorkerPool& operator=(const LocalWorkerPool&) = delete;

  void Start();
  void Stop();
  std::vector<pid_t> Pids();
  int Restarts();

 private:
  struct Slot {
    pid_t pid = -1;
    int failures = 0;
    absl::Time next_start = absl::InfinitePast();
    absl::Time started = absl::InfinitePast();
  };
  void MonitorLoop();
  pid_t Spawn(int index);

  LocalWorkerPoolOptions options_;
  util::RealClock real_clock_;
  util::Clock* clock_;
  absl::Mutex mu_;
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int restarts_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread monitor_;
};

}  // namespace ft::server

#endif  // FT_SERVER_WORKERS_LOCAL_WORKER_POOL_H_
