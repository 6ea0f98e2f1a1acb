#include "server/workers/local_worker_pool.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/util/log.h"
#include "server/workers/spawn_attributes.h"

extern char** environ;

namespace ft::server {

LocalWorkerPool::LocalWorkerPool(const LocalWorkerPoolOptions& options)
    : options_(options), clock_(options.clock != nullptr ? options.clock : &real_clock_) {
  absl::MutexLock lock(&mu_);
  slots_.resize(static_cast<size_t>(std::max(0, options.count)));
}

LocalWorkerPool::~LocalWorkerPool() { Stop(); }

void LocalWorkerPool::Start() {
  if (options_.count <= 0) return;
  monitor_ = std::thread([this] { MonitorLoop(); });
}

pid_t LocalWorkerPool::Spawn(int index) {
  const std::string work_dir = absl::StrCat(options_.work_root, "/worker-", index);
  std::error_code ec;
  std::filesystem::create_directories(work_dir, ec);
  std::vector<std::string> args = {options_.worker_binary,
                                   absl::StrCat("--server=", options_.server_address),
                                   absl::StrCat("--work-dir=", work_dir),
                                   absl::StrCat("--worker-id=", options_.worker_id_prefix, "local-", index)};
  if (options_.threads_per_worker > 0) {
    args.push_back(absl::StrCat("--threads=", options_.threads_per_worker));
  }
  // The worker exits by itself if the server goes away without stopping it.
  args.push_back(absl::StrCat("--parent-pid=", ::getpid()));
  for (const auto& a : options_.extra_args) args.push_back(a);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) {
    const absl::string_view entry(*e);
    const bool replaced = std::any_of(options_.env.begin(), options_.env.end(), [&](const std::string& ours) {
      return absl::StartsWith(entry, ours.substr(0, ours.find('=') + 1));
    });
    if (!replaced) envp.push_back(*e);
  }
  for (auto& e : options_.env) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = -1;
  const SpawnAttributes attributes;
  int rc = posix_spawn(&pid, options_.worker_binary.c_str(), nullptr, attributes.get(), argv.data(), envp.data());
  if (rc != 0) {
    std::cerr << "finetuned: cannot start worker " << options_.worker_binary << ": "
              << std::strerror(rc) << std::endl;
    return -1;
  }
  return pid;
}

void LocalWorkerPool::MonitorLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      const absl::Time now = clock_->Now();
      for (size_t i = 0; i < slots_.size(); ++i) {
        Slot& slot = slots_[i];
        if (slot.pid > 0) {
          int status = 0;
          pid_t r = ::waitpid(slot.pid, &status, WNOHANG);
          if (r == slot.pid) {
            const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
            util::Log(clean ? "info" : "warning", "finetuned",
                      clean ? "local worker exited; restarting" : "local worker died; restarting",
                      {{"worker", absl::StrCat(options_.worker_id_prefix, "local-", i)}, {"pid", absl::StrCat(slot.pid)},
                       {"how", WIFSIGNALED(status) ? absl::StrCat("signal ", WTERMSIG(status))
                                                   : absl::StrCat("exit ", WEXITSTATUS(status))}});
            slot.pid = -1;
            ++restarts_;
            if (clean) {
              // A clean exit (preempted by SIGTERM, after its checkpoint):
              // back at once, so that its job resumes here.
              slot.failures = 0;
              slot.next_start = now;
            } else {
              if (now - slot.started >= options_.stable_after) slot.failures = 0;
              ++slot.failures;
              absl::Duration backoff = options_.min_backoff;
              for (int f = 1; f < slot.failures && backoff < options_.max_backoff; ++f) backoff *= 2;
              slot.next_start = now + std::min(backoff, options_.max_backoff);
            }
          }
        }
        if (slot.pid <= 0 && now >= slot.next_start) {
          slot.pid = Spawn(static_cast<int>(i));
          slot.started = now;
          if (slot.pid <= 0) slot.next_start = now + options_.max_backoff;
        }
      }
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), absl::Milliseconds(200))) return;
    }
  }
}

void LocalWorkerPool::Stop() {
  std::vector<pid_t> pids;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (monitor_.joinable()) monitor_.join();
  {
    absl::MutexLock lock(&mu_);
    for (auto& s : slots_) {
      if (s.pid > 0) pids.push_back(s.pid);
      s.pid = -1;
    }
  }
  for (pid_t p : pids) ::kill(p, SIGTERM);
  const absl::Time deadline = clock_->Now() + absl::Seconds(10);
  for (pid_t p : pids) {
    while (true) {
      int status;
      pid_t r = ::waitpid(p, &status, WNOHANG);
      if (r == p || r < 0) break;
      if (clock_->Now() > deadline) {
        ::kill(p, SIGKILL);
        ::waitpid(p, &status, 0);
        break;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
}

std::vector<pid_t> LocalWorkerPool::Pids() {
  absl::MutexLock lock(&mu_);
  std::vector<pid_t> out;
  for (const auto& s : slots_) out.push_back(s.pid);
  return out;
}

int LocalWorkerPool::Restarts() {
  absl::MutexLock lock(&mu_);
  return restarts_;
}

}  // namespace ft::server
