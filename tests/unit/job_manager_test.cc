// JobManager over a real SqliteJobStore in a temporary folder, with a fake
// clock: leases expire when the clock says so, not when a test sleeps.
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <thread>

#include "common/util/clock.h"
#include "gtest/gtest.h"
#include "server/events/event_hub.h"
#include "server/jobs/job_manager.h"
#include "server/jobs/sqlite_job_store.h"
#include "common/util/sha256.h"
#include "server/checkpoints/checkpoint_store.h"
#include "server/models/model_store.h"
#include "tests/unit/test_dirs.h"

namespace ft::server {
namespace {
namespace fs = std::filesystem;

class JobManagerTest : public testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    testing::WriteTinyImageFolder(dir_ / "data/set");
    auto store = SqliteJobStore::Create({(dir_ / "db").string(), &clock_});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto models = FilesystemModelStore::Create({(dir_ / "models").string(), &clock_});
    ASSERT_TRUE(models.ok()) << models.status();
    models_ = *std::move(models);
    auto checkpoints = CheckpointStore::Create({(dir_ / "checkpoints").string()});
    ASSERT_TRUE(checkpoints.ok()) << checkpoints.status();
    checkpoints_ = *std::move(checkpoints);
    JobManagerOptions o;
    o.checkpoints = checkpoints_.get();
    o.dataset_roots = {(dir_ / "data").string()};
    o.lease_ttl = absl::Seconds(30);
    o.max_attempts = 2;
    o.clock = &clock_;
    manager_ = std::make_unique<JobManager>(o, store_.get(), &hub_, models_.get());
  }
  void TearDown() override {
    manager_.reset();
    TempDirTest::TearDown();
  }
  pb::Job Submit(int priority) {
    pb::JobSpec spec;
    spec.set_backbone("resnet18");
    spec.set_dataset_uri("file://" + (dir_ / "data/set").string());
    spec.set_priority(priority);
    auto job = manager_->Submit(spec, "", Submitter());
    EXPECT_TRUE(job.ok()) << job.status();
    return *job;
  }
  std::optional<LeasedJob> Lease(const std::string& worker = "w1") {
    pb::WorkerInfo w;
    w.set_worker_id(worker);
    auto leased = manager_->Lease(w, absl::ZeroDuration());
    EXPECT_TRUE(leased.ok()) << leased.status();
    return *leased;
  }
  pb::Job Get(const std::string& id) { return *manager_->Get(id); }

  util::FakeClock clock_;
  EventHub hub_;
  std::unique_ptr<SqliteJobStore> store_;
  std::unique_ptr<FilesystemModelStore> models_;
  std::unique_ptr<CheckpointStore> checkpoints_;
  std::unique_ptr<JobManager> manager_;
};

TEST_F(JobManagerTest, PriorityThenSubmitOrder) {
  const pb::Job low1 = Submit(0), high = Submit(5), low2 = Submit(0);
  EXPECT_EQ(Lease()->lease.job_id(), high.id());
  EXPECT_EQ(Lease()->lease.job_id(), low1.id());
  EXPECT_EQ(Lease()->lease.job_id(), low2.id());
  EXPECT_FALSE(Lease().has_value());
}

TEST_F(JobManagerTest, LeasesExpireByTheClockAndHeartbeatsRenewThem) {
  const pb::Job job = Submit(0);
  auto leased = Lease();
  ASSERT_TRUE(leased.has_value());
  EXPECT_EQ(Get(job.id()).state(), pb::RUNNING);
  clock_.Advance(absl::Seconds(29));
  manager_->Sweep();
  EXPECT_EQ(Get(job.id()).state(), pb::RUNNING);
  ASSERT_TRUE(manager_->Heartbeat(job.id(), leased->lease.lease_id()).ok());
  clock_.Advance(absl::Seconds(29));
  manager_->Sweep();
  EXPECT_EQ(Get(job.id()).state(), pb::RUNNING) << "the heartbeat renewed the lease";
  clock_.Advance(absl::Seconds(2));
  manager_->Sweep();
  EXPECT_EQ(Get(job.id()).state(), pb::QUEUED);
  // The old lease is gone; the job goes to the next worker as attempt 2.
  EXPECT_FALSE(manager_->Heartbeat(job.id(), leased->lease.lease_id()).ok());
  auto again = Lease("w2");
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->lease.attempt(), 2);
  EXPECT_NE(again->lease.lease_id(), leased->lease.lease_id());
}

TEST_F(JobManagerTest, FailsAfterMaxAttempts) {
  const pb::Job job = Submit(0);
  for (int attempt = 1; attempt <= 2; ++attempt) {
    auto leased = Lease();
    ASSERT_TRUE(leased.has_value()) << attempt;
    EXPECT_EQ(leased->lease.attempt(), attempt);
    clock_.Advance(absl::Seconds(31));
    manager_->Sweep();
  }
  const pb::Job failed = Get(job.id());
  EXPECT_EQ(failed.state(), pb::FAILED);
  EXPECT_NE(failed.error().find("worker was lost on each of 2 attempts"), std::string::npos) << failed.error();
  EXPECT_FALSE(Lease().has_value());
}

// Stores a checkpoint of `job` at (epoch, step) through its lease.
void StoreCheckpoint(CheckpointStore* store, const std::string& job, int epoch, int64_t step) {
  const std::string bytes = "checkpoint " + std::to_string(epoch) + "/" + std::to_string(step);
  auto up = store->BeginUpload(job, epoch, step, false, static_cast<int64_t>(bytes.size()), util::Sha256Hex(bytes));
  ASSERT_TRUE(up.ok()) << up.status();
  ASSERT_TRUE((*up)->Append(bytes).ok());
  ASSERT_TRUE(store->Commit(*std::move(up)).ok());
}

TEST_F(JobManagerTest, APreemptedJobIsQueuedAtOnceWithoutUsingAnAttempt) {
  const pb::Job job = Submit(0);
  // Three preemptions with max_attempts 2: never a failure.
  for (int round = 0; round < 3; ++round) {
    auto leased = Lease();
    ASSERT_TRUE(leased.has_value()) << round;
    EXPECT_EQ(leased->lease.attempt(), 1) << round;
    StoreCheckpoint(checkpoints_.get(), job.id(), 1, 10 * (round + 1));
    auto back = manager_->ReturnJob(job.id(), leased->lease.lease_id(), "preempted");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->state(), pb::QUEUED);
  }
  // The next attempt's RUNNING event says where it resumes.
  auto leased = Lease();
  ASSERT_TRUE(leased.has_value());
  auto events = store_->ReadEvents(job.id(), 1, 1000);
  ASSERT_TRUE(events.ok());
  const pb::StateChanged& running = events->back().state_changed();
  EXPECT_EQ(running.state(), pb::RUNNING);
  EXPECT_EQ(running.resumed_epoch(), 1);
  EXPECT_EQ(running.resumed_step(), 30);
  bool said_preempted = false;
  for (const auto& e : *events) said_preempted |= e.state_changed().message().find("(preempted)") != std::string::npos;
  EXPECT_TRUE(said_preempted);
  // A returned job whose cancel was asked ends CANCELLED, and its
  // checkpoints go.
  ASSERT_TRUE(manager_->Cancel(job.id()).ok());
  auto cancelled = manager_->ReturnJob(job.id(), leased->lease.lease_id(), "preempted");
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->state(), pb::CANCELLED);
  EXPECT_TRUE(checkpoints_->List(job.id()).empty());
}

TEST_F(JobManagerTest, AJobThatEndsLosesItsCheckpoints) {
  const pb::Job job = Submit(0);
  auto leased = Lease();
  ASSERT_TRUE(leased.has_value());
  StoreCheckpoint(checkpoints_.get(), job.id(), 1, 5);
  EXPECT_EQ(checkpoints_->List(job.id()).size(), 1u);
  pb::JobResult result;
  result.set_state(pb::FAILED);
  result.set_error("test");
  ASSERT_TRUE(manager_->Finish(job.id(), leased->lease.lease_id(), result).ok());
  EXPECT_TRUE(checkpoints_->List(job.id()).empty());
}

TEST_F(JobManagerTest, WorkersSeenByTheClock) {
  Submit(0);
  ASSERT_TRUE(Lease("busy").has_value());
  EXPECT_FALSE(Lease("idle").has_value());
  auto counts = manager_->Workers();
  EXPECT_EQ(counts.busy, 1);
  EXPECT_EQ(counts.idle, 1);
  clock_.Advance(absl::Seconds(31));
  counts = manager_->Workers();
  EXPECT_EQ(counts.busy + counts.idle, 0);
}

TEST_F(JobManagerTest, EveryRankOfAGroupCountsAsBusyWhileRank0Beats) {
  pb::JobSpec spec;
  spec.set_backbone("resnet18");
  spec.set_dataset_uri("file://" + (dir_ / "data/set").string());
  spec.set_workers(2);
  auto job = manager_->Submit(spec, "", Submitter());
  ASSERT_TRUE(job.ok()) << job.status();
  const auto joinable = [](const std::string& id, int port) {
    pb::WorkerInfo w;
    w.set_worker_id(id);
    w.set_device("cpu");
    w.set_c10d_host("127.0.0.1");
    w.set_c10d_port(port);
    return w;
  };
  // w1 waits for work (recorded as able to join), then w0 asks: w0 is rank
  // 0, w1 rank 1.
  std::optional<LeasedJob> one;
  std::thread waiter([&] {
    auto leased = manager_->Lease(joinable("w1", 29501), absl::Hours(1));
    ASSERT_TRUE(leased.ok()) << leased.status();
    one = *leased;
  });
  for (int i = 0; i < 1000 && store_->CountWaiting().value_or(0) < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto zero = manager_->Lease(joinable("w0", 29500), absl::ZeroDuration());
  waiter.join();
  ASSERT_TRUE(zero.ok()) << zero.status();
  ASSERT_TRUE(zero->has_value() && one.has_value());
  EXPECT_EQ((*zero)->lease.rank(), 0);
  EXPECT_EQ(one->lease.rank(), 1);
  auto counts = manager_->Workers();
  EXPECT_EQ(counts.busy, 2);
  EXPECT_EQ(counts.idle, 0);
  // Rank 1 is heard of only through rank 0's heartbeats.
  for (int i = 0; i < 3; ++i) {
    clock_.Advance(absl::Seconds(20));
    ASSERT_TRUE(manager_->Heartbeat(job->id(), (*zero)->lease.lease_id()).ok());
  }
  counts = manager_->Workers();
  EXPECT_EQ(counts.busy, 2);
  EXPECT_EQ(counts.idle, 0);
  // Back for more work, and none: idle.
  EXPECT_FALSE(Lease("w1").has_value());
  counts = manager_->Workers();
  EXPECT_EQ(counts.busy, 1);
  EXPECT_EQ(counts.idle, 1);
}

TEST_F(JobManagerTest, AWaitingLeaseWakesOnSubmit) {
  // The lease waits (up to an hour of real time) and returns the job as soon
  // as it is submitted; no sleep decides the outcome.
  std::optional<LeasedJob> got;
  std::thread leaser([&] {
    pb::WorkerInfo w;
    w.set_worker_id("waiter");
    auto leased = manager_->Lease(w, absl::Hours(1));
    ASSERT_TRUE(leased.ok());
    got = *leased;
  });
  const pb::Job job = Submit(0);
  leaser.join();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->lease.job_id(), job.id());
}

TEST_F(JobManagerTest, SubmitRefusesWhatCannotRun) {
  pb::JobSpec spec;
  spec.set_backbone("resnet18");
  spec.set_dataset_uri("file:///etc");
  EXPECT_TRUE(absl::IsPermissionDenied(manager_->Submit(spec, "", Submitter()).status()));
  spec.set_dataset_uri("file://" + (dir_ / "data/nope").string());
  EXPECT_TRUE(absl::IsNotFound(manager_->Submit(spec, "", Submitter()).status()));
  spec.set_dataset_uri("file://" + (dir_ / "data/set").string());
  spec.set_epochs(-1);
  EXPECT_TRUE(absl::IsInvalidArgument(manager_->Submit(spec, "", Submitter()).status()));
  spec.set_epochs(1);
  spec.set_weights_uri("model://mdl-nope");
  EXPECT_TRUE(absl::IsNotFound(manager_->Submit(spec, "", Submitter()).status()));
}

}  // namespace
}  // namespace ft::server
