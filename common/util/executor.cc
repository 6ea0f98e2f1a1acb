#include "common/util/executor.h"

#include <pthread.h>

#include <algorithm>

namespace ft::util {

Executor::Executor(const ExecutorOptions& options) : options_(options) {
  const int n = std::max(1, options_.threads);
  threads_.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    threads_.emplace_back([this] { Loop(); });
    // Linux limits thread names to 15 characters.
    pthread_setname_np(threads_.back().native_handle(), options_.name.substr(0, 15).c_str());
  }
}

Executor::~Executor() { Shutdown(); }

bool Executor::TrySchedule(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  // Idle threads take tasks at once; past them, max_queued may wait.
  const int idle = static_cast<int>(threads_.size()) - running_;
  if (options_.max_queued >= 0 && static_cast<int>(tasks_.size()) >= std::max(0, idle) + options_.max_queued) {
    return false;
  }
  tasks_.push_back(std::move(task));
  return true;
}

void Executor::Shutdown(bool drain) {
  std::deque<std::function<void()>> dropped;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (!drain) dropped.swap(tasks_);
  }
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

int Executor::running() {
  absl::MutexLock lock(&mu_);
  return running_;
}

int Executor::queued() {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(tasks_.size());
}

void Executor::Loop() {
  while (true) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !tasks_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (tasks_.empty()) return;  // stopping, and nothing left to run
      task = std::move(tasks_.front());
      tasks_.pop_front();
      ++running_;
    }
    task();
    absl::MutexLock lock(&mu_);
    --running_;
  }
}

}  // namespace ft::util
