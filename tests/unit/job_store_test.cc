#include <sqlite3.h>

#include <filesystem>
#include <memory>

#include "gtest/gtest.h"
#include "common/util/clock.h"
#include "server/jobs/sqlite_job_store.h"

namespace ft::server {
namespace {

class JobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("ft-store-" + std::to_string(::getpid()) + "-" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    Open();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Open() {
    store_.reset();
    auto s = SqliteJobStore::Create({(dir_ / "db").string(), &clock_});
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
  }
  pb::Job Create(int priority, const std::string& request_id = "", const std::string& tenant = "") {
    pb::ResolvedJob r;
    r.mutable_spec()->set_backbone("resnet18");
    r.mutable_spec()->set_priority(priority);
    r.set_tenant(tenant);
    auto job = store_->CreateJob(r, request_id);
    EXPECT_TRUE(job.ok()) << job.status();
    return *job;
  }
  LeasedJob Lease(const std::string& worker = "w1") {
    pb::WorkerInfo w;
    w.set_worker_id(worker);
    auto l = store_->LeaseNext(w, absl::Seconds(30));
    EXPECT_TRUE(l.ok()) << l.status();
    EXPECT_TRUE(l->has_value());
    return **l;
  }

  std::filesystem::path dir_;
  util::FakeClock clock_;
  std::unique_ptr<SqliteJobStore> store_;
};

TEST_F(JobStoreTest, PriorityThenFifo) {
  pb::Job a = Create(0), b = Create(5), c = Create(0), d = Create(5);
  EXPECT_EQ(*store_->QueuePosition(b.id()), 1);
  EXPECT_EQ(*store_->QueuePosition(d.id()), 2);
  EXPECT_EQ(*store_->QueuePosition(a.id()), 3);
  EXPECT_EQ(Lease().lease.job_id(), b.id());
  EXPECT_EQ(Lease().lease.job_id(), d.id());
  EXPECT_EQ(Lease().lease.job_id(), a.id());
  EXPECT_EQ(Lease().lease.job_id(), c.id());
  pb::WorkerInfo w;
  w.set_worker_id("w");
  EXPECT_FALSE(store_->LeaseNext(w, absl::Seconds(1))->has_value());
}

TEST_F(JobStoreTest, RequestIdIsIdempotent) {
  pb::Job a = Create(0, "req-1");
  pb::Job b = Create(0, "req-1");
  EXPECT_EQ(a.id(), b.id());
  EXPECT_NE(Create(0, "req-2").id(), a.id());
}

TEST_F(JobStoreTest, ExpiredLeaseRequeuesThenFails) {
  pb::Job job = Create(0);
  LeasedJob l1 = Lease();
  clock_.Advance(absl::Seconds(10));
  ASSERT_TRUE(store_->RenewLease(job.id(), l1.lease.lease_id(), absl::Seconds(30)).ok());
  clock_.Advance(absl::Seconds(29));
  EXPECT_TRUE(store_->ExpireLeases(2)->empty());
  clock_.Advance(absl::Seconds(2));
  auto expired = store_->ExpireLeases(2);
  ASSERT_EQ(expired->size(), 1u);
  EXPECT_EQ((*expired)[0].new_state, pb::QUEUED);
  // The old lease is dead: its events and result are refused.
  pb::JobEvent e;
  e.mutable_log()->set_message("late");
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->AppendEvent(job.id(), l1.lease.lease_id(), e).status()));
  LeasedJob l2 = Lease("w2");
  EXPECT_EQ(l2.lease.attempt(), 2);
  clock_.Advance(absl::Seconds(31));
  expired = store_->ExpireLeases(2);
  ASSERT_EQ(expired->size(), 1u);
  EXPECT_EQ((*expired)[0].new_state, pb::FAILED);
  auto final_job = store_->GetJob(job.id());
  EXPECT_EQ(final_job->state(), pb::FAILED);
  EXPECT_NE(final_job->error().find("lost"), std::string::npos);
}

TEST_F(JobStoreTest, EventsAreNumberedAndSurviveReopen) {
  pb::Job job = Create(0);
  LeasedJob l = Lease();
  for (int i = 0; i < 5; ++i) {
    pb::JobEvent e;
    e.mutable_progress()->set_step(i);
    ASSERT_TRUE(store_->AppendEvent(job.id(), l.lease.lease_id(), e).ok());
  }
  pb::JobResult result;
  result.set_state(pb::SUCCEEDED);
  result.set_model_id("mdl-x");
  ASSERT_TRUE(store_->FinishJob(job.id(), l.lease.lease_id(), result).ok());
  Open();
  auto events = store_->ReadEvents(job.id(), 1, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 8u);  // QUEUED, RUNNING, 5 progress, SUCCEEDED
  for (size_t i = 0; i < events->size(); ++i) EXPECT_EQ((*events)[i].sequence(), static_cast<int64_t>(i + 1));
  EXPECT_EQ((*events)[7].state_changed().state(), pb::SUCCEEDED);
  auto tail = store_->ReadEvents(job.id(), 6, 100);
  ASSERT_EQ(tail->size(), 3u);
  EXPECT_EQ((*tail)[0].sequence(), 6);
  auto reopened = store_->GetJob(job.id());
  EXPECT_EQ(reopened->state(), pb::SUCCEEDED);
  EXPECT_EQ(reopened->last_sequence(), 8);
  EXPECT_EQ(reopened->model_id(), "mdl-x");
}

TEST_F(JobStoreTest, CancelQueuedAndRunning) {
  pb::Job queued = Create(0);
  EXPECT_EQ(store_->RequestCancel(queued.id())->state(), pb::CANCELLED);
  pb::Job running = Create(0);
  LeasedJob l = Lease();
  auto j = store_->RequestCancel(running.id());
  EXPECT_EQ(j->state(), pb::RUNNING);
  EXPECT_TRUE(j->cancel_requested());
  EXPECT_TRUE(store_->RenewLease(running.id(), l.lease.lease_id(), absl::Seconds(30))->cancel_requested());
  // A cancelled job whose worker vanished ends CANCELLED, not re-queued.
  ASSERT_TRUE(store_->ReleaseLease(running.id(), l.lease.lease_id()).ok());
  auto expired = store_->ExpireLeases(3);
  ASSERT_EQ(expired->size(), 1u);
  EXPECT_EQ((*expired)[0].new_state, pb::CANCELLED);
  EXPECT_TRUE(absl::IsNotFound(store_->GetJob("job-missing").status()));
}

TEST_F(JobStoreTest, JobsCarryTheirTenant) {
  const pb::Job v1 = Create(0, "", "vision"), v2 = Create(0, "", "vision"), a = Create(0, "", "audio");
  const pb::Job d = Create(0);
  EXPECT_EQ(store_->GetJob(v1.id())->tenant(), "vision");
  EXPECT_EQ(a.tenant(), "audio");
  EXPECT_EQ(d.tenant(), "default");  // no tenant given: the default one
  auto vision = store_->ListJobs({}, 100, "vision");
  ASSERT_TRUE(vision.ok()) << vision.status();
  ASSERT_EQ(vision->size(), 2u);
  EXPECT_EQ((*vision)[0].id(), v2.id());
  EXPECT_EQ((*vision)[1].id(), v1.id());
  EXPECT_EQ(store_->ListJobs({}, 100, "")->size(), 4u);
  EXPECT_EQ(store_->ListJobs({pb::QUEUED}, 100, "audio")->size(), 1u);
  EXPECT_TRUE(store_->ListJobs({}, 100, "nobody")->empty());

  // Queued and running jobs hold a place in the quota; finished ones do not.
  EXPECT_EQ(*store_->CountActive("vision"), 2);
  Lease();  // v1, the oldest
  EXPECT_EQ(*store_->CountActive("vision"), 2);
  ASSERT_TRUE(store_->RequestCancel(v2.id()).ok());
  EXPECT_EQ(*store_->CountActive("vision"), 1);
  EXPECT_EQ(*store_->CountActive("audio"), 1);
  EXPECT_EQ(*store_->CountActive("nobody"), 0);
}

// A database written before tenants: the jobs table without the column.
TEST_F(JobStoreTest, MigratesADatabaseWithoutTheTenantColumn) {
  store_.reset();
  const std::string path = (dir_ / "old.db").string();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  pb::ResolvedJob r;
  r.mutable_spec()->set_backbone("resnet18");
  const std::string blob = r.SerializeAsString();
  ASSERT_EQ(sqlite3_exec(db, R"sql(
    CREATE TABLE jobs (
      n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, request_id TEXT UNIQUE,
      state INTEGER NOT NULL, priority INTEGER NOT NULL, resolved BLOB NOT NULL,
      attempts INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '',
      model_id TEXT NOT NULL DEFAULT '', metrics BLOB, create_us INTEGER NOT NULL,
      start_us INTEGER NOT NULL DEFAULT 0, end_us INTEGER NOT NULL DEFAULT 0,
      worker_id TEXT NOT NULL DEFAULT '', lease_id TEXT NOT NULL DEFAULT '',
      lease_expires_us INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0,
      last_seq INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE events (job_id TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,
      PRIMARY KEY (job_id, seq)) WITHOUT ROWID;)sql",
                         nullptr, nullptr, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_stmt* ins = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db,
                               "INSERT INTO jobs(id, state, priority, resolved, create_us) "
                               "VALUES ('job-old', 1, 0, ?, 1)",
                               -1, &ins, nullptr),
            SQLITE_OK);
  sqlite3_bind_blob(ins, 1, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
  ASSERT_EQ(sqlite3_step(ins), SQLITE_DONE);
  sqlite3_finalize(ins);
  sqlite3_close(db);

  for (int open = 0; open < 2; ++open) {  // the second open finds the column there
    auto s = SqliteJobStore::Create({path, &clock_});
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
    auto old = store_->GetJob("job-old");
    ASSERT_TRUE(old.ok()) << old.status();
    EXPECT_EQ(old->tenant(), "default");
    EXPECT_EQ(old->spec().backbone(), "resnet18");
    EXPECT_EQ(store_->ListJobs({}, 100, "default")->size(), 1u + open);
    EXPECT_EQ(*store_->CountActive("default"), 1 + open);
    if (open == 0) {
      EXPECT_EQ(Create(0, "", "vision").tenant(), "vision");
      Create(0);
    }
  }
  EXPECT_EQ(store_->ListJobs({}, 100, "vision")->size(), 1u);
}

}  // namespace
}  // namespace ft::server
