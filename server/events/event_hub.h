#ifndef FT_SERVER_EVENTS_EVENT_HUB_H_
#define FT_SERVER_EVENTS_EVENT_HUB_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/synchronization/mutex.h"

namespace ft::server {

// Live fan-out of "job X has new events" to any number of watchers. The
// events themselves live in the JobStore's persisted log: a watcher that is
// woken re-reads the log from its own cursor, so it never sees a gap or a
// duplicate however notifications interleave.
//
// Thread-safe. Callbacks run on the notifying thread, under the hub's lock,
// and must not block or call back into the hub.
class EventHub {
 public:
  using Callback = std::function<void()>;

  // Returns a token for Unsubscribe. `callback` runs after every Notify(job_id).
  int64_t Subscribe(const std::string& job_id, Callback callback);
  // After it returns, the callback will not run again.
  void Unsubscribe(int64_t token);
  void Notify(const std::string& job_id);
  int WatcherCount();

 private:
  struct Subscriber {
    std::string job_id;
    Callback callback;
  };
  absl::Mutex mu_;
  int64_t next_token_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<int64_t, Subscriber> subscribers_ ABSL_GUARDED_BY(mu_);
  std::multimap<std::string, int64_t> by_job_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ft::server

#endif  // FT_SERVER_EVENTS_EVENT_HUB_H_
