#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/util/executor.h"
#include "gtest/gtest.h"

namespace ft::util {
namespace {

TEST(ExecutorTest, RunsInOrderBoundsTheQueueAndDrains) {
  ExecutorOptions o;
  o.threads = 1;
  o.max_queued = 2;
  Executor ex(o);
  absl::Notification started, release;
  std::vector<int> order;
  absl::Mutex mu;
  ASSERT_TRUE(ex.TrySchedule([&] {
    started.Notify();
    release.WaitForNotification();
  }));
  started.WaitForNotification();
  EXPECT_EQ(ex.running(), 1);
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(ex.TrySchedule([&, i] {
      absl::MutexLock lock(&mu);
      order.push_back(i);
    }));
  }
  EXPECT_EQ(ex.queued(), 2);
  // Full: refused at once, never a wait.
  EXPECT_FALSE(ex.TrySchedule([] {}));
  release.Notify();
  ex.Shutdown();  // runs what was queued
  EXPECT_EQ(order, (std::vector<int>{0, 1}));
  EXPECT_FALSE(ex.TrySchedule([] {}));
}

TEST(ExecutorTest, ShutdownWithoutDrainDropsTheQueue) {
  ExecutorOptions o;
  o.threads = 1;
  Executor ex(o);
  absl::Notification started, release;
  std::atomic<int> ran{0};
  ASSERT_TRUE(ex.TrySchedule([&] {
    started.Notify();
    release.WaitForNotification();
    ++ran;
  }));
  started.WaitForNotification();
  ASSERT_TRUE(ex.TrySchedule([&] { ++ran; }));
  // Shut down while the first task still runs: the queued one is dropped
  // before the thread could take it, then the first is let go.
  std::thread stopper([&] { ex.Shutdown(/*drain=*/false); });
  while (ex.queued() > 0) absl::SleepFor(absl::Milliseconds(1));
  release.Notify();
  stopper.join();
  EXPECT_EQ(ran.load(), 1);
}

TEST(ExecutorTest, ManyThreadsRunAtOnce) {
  ExecutorOptions o;
  o.threads = 4;
  Executor ex(o);
  absl::Mutex mu;
  int inside = 0;
  // Four tasks that each wait for all four to be inside: only possible if
  // they run at once.
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(ex.TrySchedule([&] {
      absl::MutexLock lock(&mu);
      ++inside;
      auto all = [&] { return inside == 4; };
      mu.Await(absl::Condition(&all));
    }));
  }
  ex.Shutdown();
  EXPECT_EQ(inside, 4);
}

}  // namespace
}  // namespace ft::util
