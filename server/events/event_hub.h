#ifndef FT_SERVER_EVENTS_EVENT_HUB_H_
#define FT_SERVER_EVENTS_EVENT_HUB_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"

namespace ft::server {

// Live fan-out of "job X has new events" to any number of watchers, after
// TF Serving's util/event_bus.h. The events themselves live in the
// JobStore's persisted log: a woken watcher re-reads the log from its own
// cursor, later and on its own thread, so it never sees a gap or a
// duplicate however notifications interleave, and the notifier never waits
// on a watcher.
//
// Thread-safe. Wake callbacks run on the notifying thread under the hub's
// lock: they must only note that there is news (set a flag, schedule a
// read), never read the log, block, or call back into the hub.
class EventHub {
 public:
  using WakeCallback = std::function<void()>;

  // Unsubscribes when destroyed; after the destructor returns, the callback
  // never runs again. Must not outlive the hub.
  class Subscription {
   public:
    ~Subscription();
    Subscription(const Subscription&) = delete;
    Subscription& operator=(const Subscription&) = delete;

   private:
    friend class EventHub;
    Subscription(EventHub* hub, int64_t token) : hub_(hub), token_(token) {}
    EventHub* hub_;
    int64_t token_;
  };

  EventHub() = default;
  EventHub(const EventHub&) = delete;
  EventHub& operator=(const EventHub&) = delete;

  // `wake` runs after every Notify(job_id) until the subscription goes.
  std::unique_ptr<Subscription> Subscribe(const std::string& job_id, WakeCallback wake);
  void Notify(const std::string& job_id);
  // Every subscriber has news: after notifications may have been lost (the
  // job store's change feed reconnected).
  void NotifyAll();
  int WatcherCount();

 private:
  void Unsubscribe(int64_t token);

  struct Subscriber {
    std::string job_id;
    WakeCallback wake;
  };
  absl::Mutex mu_;
  int64_t next_token_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<int64_t, Subscriber> subscribers_ ABSL_GUARDED_BY(mu_);
  std::multimap<std::string, int64_t> by_job_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ft::server

#endif  // FT_SERVER_EVENTS_EVENT_HUB_H_
