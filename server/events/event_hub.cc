#include "server/events/event_hub.h"

namespace ft::server {

int64_t EventHub::Subscribe(const std::string& job_id, Callback callback) {
  absl::MutexLock lock(&mu_);
  const int64_t token = next_token_++;
  subscribers_.emplace(token, Subscriber{job_id, std::move(callback)});
  by_job_.emplace(job_id, token);
  return token;
}

void EventHub::Unsubscribe(int64_t token) {
  absl::MutexLock lock(&mu_);
  auto it = subscribers_.find(token);
  if (it == subscribers_.end()) return;
  auto range = by_job_.equal_range(it->second.job_id);
  for (auto j = range.first; j != range.second; ++j) {
    if (j->second == token) {
      by_job_.erase(j);
      break;
    }
  }
  subscribers_.erase(it);
}

void EventHub::Notify(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto range = by_job_.equal_range(job_id);
  for (auto j = range.first; j != range.second; ++j) {
    subscribers_.at(j->second).callback();
  }
}

int EventHub::WatcherCount() {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(subscribers_.size());
}

}  // namespace ft::server
