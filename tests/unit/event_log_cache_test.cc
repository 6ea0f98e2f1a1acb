// EventLogCache over a fake JobStore whose reads can be held: what a watcher
// gets while another watcher's read of the store is under way.
#include "server/jobs/event_log_cache.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace ft::server {
namespace {

// One job's event log in memory; ReadEvents blocks while `held`.
class HeldStore : public JobStore {
 public:
  void Append() {
    absl::MutexLock lock(&mu_);
    pb::JobEvent e;
    e.set_sequence(static_cast<int64_t>(events_.size()) + 1);
    events_.push_back(e);
  }
  void Hold() {
    absl::MutexLock lock(&mu_);
    held_ = true;
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    held_ = false;
  }
  // Waits until a read is blocked in Hold.
  void AwaitBlockedRead() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&blocked_));
  }

  absl::StatusOr<std::vector<pb::JobEvent>> ReadEvents(const std::string&, int64_t from, int limit) override {
    absl::MutexLock lock(&mu_);
    // What the store holds when the read starts (its snapshot).
    std::vector<pb::JobEvent> out;
    for (const auto& e : events_) {
      if (e.sequence() >= from && static_cast<int>(out.size()) < limit) out.push_back(e);
    }
    blocked_ = held_;
    auto released = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !held_; };
    mu_.Await(absl::Condition(&released));
    blocked_ = false;
    return out;
  }
  absl::StatusOr<pb::Job> GetJob(const std::string& id) override {
    absl::MutexLock lock(&mu_);
    pb::Job job;
    job.set_id(id);
    job.set_state(pb::RUNNING);
    job.set_last_sequence(static_cast<int64_t>(events_.size()));
    return job;
  }

  // Not used by the cache.
  absl::StatusOr<pb::Job> CreateJob(const pb::ResolvedJob&, const std::string&) override { return No(); }
  absl::StatusOr<std::vector<pb::Job>> ListJobs(const std::vector<pb::JobState>&, int, const std::string&) override {
    return No();
  }
  absl::StatusOr<int> QueuePosition(const std::string&) override { return No(); }
  absl::StatusOr<int> CountInState(pb::JobState) override { return No(); }
  absl::StatusOr<int> CountActive(const std::string&) override { return No(); }
  absl::StatusOr<std::optional<LeasedJob>> LeaseNext(const pb::WorkerInfo&, absl::Duration, const ResumePointFn&,
                                                     absl::Time) override {
    return No();
  }
  absl::StatusOr<std::optional<LeasedJob>> StopWaiting(const pb::WorkerInfo&, absl::Duration) override { return No(); }
  absl::StatusOr<int> CountWaiting() override { return No(); }
  absl::StatusOr<int64_t> QueuedWorkerDemand() override { return No(); }
  absl::StatusOr<pb::Job> RenewLease(const std::string&, const std::string&, absl::Duration) override { return No(); }
  absl::StatusOr<pb::Job> FinishJob(const std::string&, const std::string&, const pb::JobResult&) override {
    return No();
  }
  absl::StatusOr<pb::Job> RequestCancel(const std::string&) override { return No(); }
  absl::StatusOr<std::vector<ExpiredLease>> ExpireLeases(int) override { return No(); }
  absl::Status ReleaseLease(const std::string&, const std::string&) override { return No(); }
  absl::StatusOr<pb::Job> ReturnJob(const std::string&, const std::string&, const std::string&) override {
    return No();
  }
  absl::Status CheckLease(const std::string&, const std::string&) override { return No(); }
  absl::StatusOr<pb::JobEvent> AppendEvent(const std::string&, const std::string&, pb::JobEvent) override {
    return No();
  }
  absl::StatusOr<pb::ResolvedJob> GetResolvedJob(const std::string&) override { return No(); }

 private:
  static absl::Status No() { return absl::UnimplementedError("not in this fake"); }
  absl::Mutex mu_;
  std::vector<pb::JobEvent> events_ ABSL_GUARDED_BY(mu_);
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  bool blocked_ ABSL_GUARDED_BY(mu_) = false;
};

// The race seen with 200 watchers on a PostgreSQL replica: news of event 2
// wakes two watchers; the first one's read of the store starts (and finds
// event 2); the second, caught up at 2, asks while that read is under way.
// It must wait for that read, not answer "nothing new": its news is
// already spent, and no other wake would come.
TEST(EventLogCacheTest, AReadDuringAnotherWatchersReadWaitsForIt) {
  HeldStore store;
  EventLogCache cache(&store);
  store.Append();
  auto first = cache.Read("job", 1, 10);
  ASSERT_TRUE(first.ok());
  ASSERT_EQ(first->events.size(), 1u);

  store.Append();  // event 2, and its news
  cache.Invalidate("job");
  store.Hold();
  EventLogCache::Slice a_slice;
  std::thread a([&] { a_slice = *cache.Read("job", 2, 10); });
  store.AwaitBlockedRead();
  std::atomic<bool> b_done{false};
  EventLogCache::Slice b_slice;
  std::thread b([&] {
    b_slice = *cache.Read("job", 2, 10);
    b_done = true;
  });
  // B waits for A's read (it cannot be told apart from answering at once
  // but by its result, so give it time to answer wrongly).
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE(b_done.load()) << "answered during another watcher's read";
  store.Release();
  a.join();
  b.join();
  ASSERT_EQ(a_slice.events.size(), 1u);
  EXPECT_EQ(a_slice.events[0].sequence(), 2);
  ASSERT_EQ(b_slice.events.size(), 1u);
  EXPECT_EQ(b_slice.events[0].sequence(), 2);
}

// Caught up with no news and no read under way: answered at once, nothing.
TEST(EventLogCacheTest, CaughtUpWithoutNewsIsAnsweredAtOnce) {
  HeldStore store;
  EventLogCache cache(&store);
  store.Append();
  ASSERT_EQ(cache.Read("job", 1, 10)->events.size(), 1u);
  store.Hold();  // a read of the store now would block the test
  auto again = cache.Read("job", 2, 10);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->events.empty());
  EXPECT_EQ(again->last_sequence, 1);
  store.Release();
}

}  // namespace
}  // namespace ft::server
