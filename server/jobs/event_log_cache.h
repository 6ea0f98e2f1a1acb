#ifndef FT_SERVER_JOBS_EVENT_LOG_CACHE_H_
#define FT_SERVER_JOBS_EVENT_LOG_CACHE_H_

#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/jobs/job_store.h"

namespace ft::server {

// The recent events of watched jobs, read from the store once for all their
// watchers: a thousand watchers of one job cost one store read per batch of
// news, not a thousand. The store stays the source of truth: a watcher asks
// for "events from sequence N", and gets exactly the store's events N, N+1,
// ..., so it never sees a gap or a duplicate. Thread-safe; concurrent misses
// for one job wait for a single read.
class EventLogCache {
 public:
  struct Options {
    size_t max_events_per_job = 4096;  // older ones are read from the store again
    size_t max_jobs = 256;             // the least recently read go first
  };
  // `store` is not owned and must outlive the cache.
  explicit EventLogCache(JobStore* store) : EventLogCache(store, Options()) {}
  EventLogCache(JobStore* store, const Options& options);

  struct Slice {
    std::vector<pb::JobEvent> events;  // from `from` on, in order; empty when caught up
    // The job as it was when the events were read: whether it has ended,
    // and its last event's sequence.
    bool terminal = false;
    int64_t last_sequence = 0;
  };
  // At most `max` events from sequence `from` on.
  absl::StatusOr<Slice> Read(const std::string& job_id, int64_t from, int max);
  // The job has news: the next Read past what is cached asks the store.
  void Invalidate(const std::string& job_id);

 private:
  struct Entry {
    int64_t first = 1;  // sequence of events.front()
    std::deque<pb::JobEvent> events;
    bool stale = true;
    bool loading = false;
    bool terminal = false;
    int64_t last_sequence = 0;
    std::list<std::string>::iterator lru;
  };
  Entry& EntryLocked(const std::string& job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Slice SliceLocked(const Entry& e, int64_t from, int max) ABSL_SHARED_LOCKS_REQUIRED(mu_);

  JobStore* const store_;
  const Options options_;
  absl::Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::list<std::string> lru_ ABSL_GUARDED_BY(mu_);  // most recent first
};

}  // namespace ft::server

#endif  // FT_SERVER_JOBS_EVENT_LOG_CACHE_H_
