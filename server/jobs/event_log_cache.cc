#include "server/jobs/event_log_cache.h"

#include <algorithm>

namespace ft::server {

EventLogCache::EventLogCache(JobStore* store, const Options& options)
    : store_(store), options_(options) {}

EventLogCache::Entry& EventLogCache::EntryLocked(const std::string& job_id) {
  auto it = entries_.find(job_id);
  if (it != entries_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    return it->second;
  }
  // Evict the least recently read entries nobody is loading.
  for (auto victim = lru_.rbegin(); entries_.size() >= options_.max_jobs && victim != lru_.rend();) {
    auto e = entries_.find(*victim);
    if (e->second.loading) {
      ++victim;
      continue;
    }
    entries_.erase(e);
    victim = std::make_reverse_iterator(lru_.erase(std::next(victim).base()));
  }
  lru_.push_front(job_id);
  Entry& e = entries_[job_id];
  e.lru = lru_.begin();
  return e;
}

EventLogCache::Slice EventLogCache::SliceLocked(const Entry& e, int64_t from, int max) {
  Slice out;
  out.terminal = e.terminal;
  out.last_sequence = e.last_sequence;
  const int64_t end = e.first + static_cast<int64_t>(e.events.size());
  for (int64_t s = from; s < end && static_cast<int>(out.events.size()) < max; ++s) {
    out.events.push_back(e.events[static_cast<size_t>(s - e.first)]);
  }
  return out;
}

absl::StatusOr<EventLogCache::Slice> EventLogCache::Read(const std::string& job_id, int64_t from, int max) {
  absl::MutexLock lock(&mu_);
  while (true) {
    Entry& e = EntryLocked(job_id);
    const int64_t end = e.first + static_cast<int64_t>(e.events.size());
    if (from < e.first) break;  // older than the cache keeps: straight from the store
    if (from < end) return SliceLocked(e, from, max);
    // Caught up (or a cursor ahead of the log): nothing new, unless there
    // is news, or a read under way, which began after some watcher's news
    // and may hold this one's too. Answering "nothing" during a read would
    // leave a watcher woken before it idle with its news unread.
    if (!e.stale && !e.loading) return SliceLocked(e, from, max);
    if (e.loading) {
      // One read for all: wait for it, then look again.
      auto done = [this, &job_id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        auto it = entries_.find(job_id);
        return it == entries_.end() || !it->second.loading;
      };
      mu_.Await(absl::Condition(&done));
      continue;
    }
    // Load the news after what is cached (or from `from` for an empty entry).
    e.loading = true;
    e.stale = false;  // an Invalidate during the read marks it again
    const int64_t load_from = e.events.empty() ? from : end;
    if (e.events.empty()) e.first = from;
    mu_.Unlock();
    absl::StatusOr<std::vector<pb::JobEvent>> events = store_->ReadEvents(job_id, load_from, std::max(max, 128));
    absl::StatusOr<pb::Job> job = store_->GetJob(job_id);
    mu_.Lock();
    Entry& loaded = EntryLocked(job_id);
    loaded.loading = false;
    if (!events.ok() || !job.ok()) {
      loaded.stale = true;
      return !events.ok() ? events.status() : job.status();
    }
    for (auto& ev : *events) {
      if (ev.sequence() == loaded.first + static_cast<int64_t>(loaded.events.size())) {
        loaded.events.push_back(std::move(ev));
      }
    }
    // A full batch may not be all there is.
    if (static_cast<int>(events->size()) >= std::max(max, 128)) loaded.stale = true;
    loaded.terminal = IsTerminal(job->state());
    loaded.last_sequence = job->last_sequence();
    while (loaded.events.size() > options_.max_events_per_job) {
      loaded.events.pop_front();
      ++loaded.first;
    }
  }
  // Behind the cache: a direct, uncached read.
  mu_.Unlock();
  auto events = store_->ReadEvents(job_id, from, max);
  auto job = store_->GetJob(job_id);
  mu_.Lock();
  if (!events.ok()) return events.status();
  if (!job.ok()) return job.status();
  Slice out;
  out.events = *std::move(events);
  out.terminal = IsTerminal(job->state());
  out.last_sequence = job->last_sequence();
  return out;
}

void EventLogCache::Invalidate(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(job_id);
  if (it != entries_.end()) it->second.stale = true;
}

}  // namespace ft::server
