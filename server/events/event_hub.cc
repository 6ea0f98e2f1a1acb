#include "server/events/event_hub.h"

namespace ft::server {

EventHub::Subscription::~Subscription() { hub_->Unsubscribe(token_); }

std::unique_ptr<EventHub::Subscription> EventHub::Subscribe(const std::string& job_id, WakeCallback wake) {
  absl::MutexLock lock(&mu_);
  const int64_t token = next_token_++;
  subscribers_.emplace(token, Subscriber{job_id, std::move(wake)});
  by_job_.emplace(job_id, token);
  return std::unique_ptr<Subscription>(new Subscription(this, token));
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
  for (auto j = range.first; j != range.second; ++j) subscribers_.at(j->second).wake();
}

void EventHub::NotifyAll() {
  absl::MutexLock lock(&mu_);
  for (auto& [token, subscriber] : subscribers_) subscriber.wake();
}

int EventHub::WatcherCount() {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(subscribers_.size());
}

}  // namespace ft::server
