#ifndef FT_COMMON_UTIL_EXECUTOR_H_
#define FT_COMMON_UTIL_EXECUTOR_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace ft::util {

struct ExecutorOptions {
  // For logs and thread names.
  std::string name = "executor";
  // Tasks that run at once.
  int threads = 1;
  // Tasks that may wait while every thread is busy; past it TrySchedule
  // refuses. Negative: no limit.
  int max_queued = -1;
};

// A fixed pool of threads that runs queued tasks in FIFO order: where slow
// work goes so that the threads that schedule it (gRPC callbacks, a
// notifier) never wait on it. Thread-safe. The destructor (or Shutdown)
// stops accepting tasks, runs those already queued, and joins the threads.
class Executor {
 public:
  explicit Executor(const ExecutorOptions& options);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Queues `task`; false (and `task` is dropped) when max_queued tasks are
  // already waiting, or after Shutdown.
  bool TrySchedule(std::function<void()> task);
  // Stops accepting tasks, runs the queued ones (or, with drain false,
  // drops them), then joins. Idempotent. Must not be called from one of the
  // executor's own tasks.
  void Shutdown(bool drain = true);

  int running();
  int queued();
  const ExecutorOptions& options() const { return options_; }

 private:
  void Loop();

  const ExecutorOptions options_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace ft::util

#endif  // FT_COMMON_UTIL_EXECUTOR_H_
