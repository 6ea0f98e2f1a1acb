// The JobStore promises, checked on both backends: every TEST_P runs on
// SqliteJobStore (a file in a fresh folder) and on PostgresJobStore (a fresh
// database on this binary's own PostgreSQL, tests/unit/postgres_fixture.h).
// Then what only PostgreSQL has: several stores (server replicas) on one
// database, its versioned migrations, connections lost and URLs.
#include <sqlite3.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "common/util/clock.h"
#include "server/jobs/postgres_job_store.h"
#include "server/jobs/sqlite_job_store.h"
#include "tests/unit/postgres_fixture.h"
#include "tests/unit/test_dirs.h"

namespace ft::server {
namespace {

[[maybe_unused]] ::testing::Environment* const kPostgres = ::testing::AddGlobalTestEnvironment(new testing::PostgresEnvironment);

pb::ResolvedJob Spec(int priority = 0, const std::string& tenant = "") {
  pb::ResolvedJob r;
  r.mutable_spec()->set_backbone("resnet18");
  r.mutable_spec()->set_priority(priority);
  r.set_tenant(tenant);
  return r;
}

pb::WorkerInfo Worker(const std::string& id) {
  pb::WorkerInfo w;
  w.set_worker_id(id);
  return w;
}

// A worker that can join a multi-worker job's group.
pb::WorkerInfo GangWorker(const std::string& id, int port = 29500, const std::string& device = "cpu") {
  pb::WorkerInfo w = Worker(id);
  w.set_device(device);
  w.set_c10d_host("10.0.0.1");
  w.set_c10d_port(port);
  return w;
}

pb::ResolvedJob GangSpec(int workers, int priority = 0) {
  pb::ResolvedJob r = Spec(priority);
  r.mutable_spec()->set_workers(workers);
  return r;
}

class JobStoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTestDir("ft-store");
    if (GetParam() == "postgres") {
      auto pg = testing::SharedPostgres();
      ASSERT_TRUE(pg.ok()) << pg.status();
      auto db = (*pg)->CreateDatabase();
      ASSERT_TRUE(db.ok()) << db.status();
      url_ = (*pg)->Url(*db);
    }
    Open();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  // Opens the store again, on the same file or database.
  void Open() {
    store_.reset();
    if (GetParam() == "sqlite") {
      auto s = SqliteJobStore::Create({(dir_ / "db").string(), &clock_});
      ASSERT_TRUE(s.ok()) << s.status();
      store_ = *std::move(s);
    } else {
      auto s = PostgresJobStore::Create({url_, /*max_connections=*/2, &clock_});
      ASSERT_TRUE(s.ok()) << s.status();
      store_ = *std::move(s);
    }
  }
  pb::Job Create(int priority, const std::string& request_id = "", const std::string& tenant = "") {
    auto job = store_->CreateJob(Spec(priority, tenant), request_id);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : pb::Job();
  }
  LeasedJob Lease(const std::string& worker = "w1", const JobStore::ResumePointFn& resume = nullptr) {
    auto l = store_->LeaseNext(Worker(worker), absl::Seconds(30), resume);
    EXPECT_TRUE(l.ok()) << l.status();
    EXPECT_TRUE(l.ok() && l->has_value());
    return l.ok() && l->has_value() ? **l : LeasedJob();
  }
  std::vector<pb::JobEvent> Events(const std::string& job_id) {
    auto events = store_->ReadEvents(job_id, 1, 1000);
    EXPECT_TRUE(events.ok()) << events.status();
    return events.ok() ? *events : std::vector<pb::JobEvent>();
  }

  std::filesystem::path dir_;
  std::string url_;
  util::FakeClock clock_;
  std::unique_ptr<JobStore> store_;
};

INSTANTIATE_TEST_SUITE_P(Backends, JobStoreTest, ::testing::Values("sqlite", "postgres"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// A job needing 3 workers waits until 3 wait at once, while a job needing
// one behind it runs (backfill); then the third worker's lease forms the
// group: it is rank 0, the two that waited longest ranks 1 and 2, which
// take their ranks at their next LeaseNext, with the same lease.
TEST_P(JobStoreTest, GangLeasesAllOrNothingWithBackfill) {
  const absl::Time until = clock_.Now() + absl::Seconds(30);
  const std::string gang_job = store_->CreateJob(GangSpec(3), "")->id();
  const std::string small_job = Create(0).id();
  EXPECT_EQ(*store_->QueuedWorkerDemand(), 4);
  // Two workers: not enough for the group; the first takes the small job.
  auto a = store_->LeaseNext(GangWorker("a"), absl::Seconds(30), nullptr, until);
  ASSERT_TRUE(a.ok() && a->has_value()) << a.status();
  EXPECT_EQ((*a)->lease.job_id(), small_job);
  EXPECT_EQ((*a)->lease.gang().world_size(), 0);
  auto b = store_->LeaseNext(GangWorker("b"), absl::Seconds(30), nullptr, until);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_FALSE(b->has_value());
  clock_.Advance(absl::Seconds(1));
  auto c = store_->LeaseNext(GangWorker("c"), absl::Seconds(30), nullptr, until);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->has_value());
  EXPECT_EQ(*store_->CountWaiting(), 2);
  EXPECT_EQ(store_->GetJob(gang_job)->state(), pb::QUEUED);
  // A worker that cannot join a group does not complete it.
  auto plain = store_->LeaseNext(Worker("plain"), absl::Seconds(30), nullptr, until);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->has_value());
  // Nor does one of another device kind.
  auto gpu = store_->LeaseNext(GangWorker("gpu", 29500, "cuda:0"), absl::Seconds(30), nullptr, until);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_FALSE(gpu->has_value());
  ASSERT_TRUE(store_->StopWaiting(GangWorker("gpu", 29500, "cuda:0"), absl::Seconds(30)).ok());
  // The third: rank 0.
  auto d = store_->LeaseNext(GangWorker("d", 29511), absl::Seconds(30), nullptr, until);
  ASSERT_TRUE(d.ok() && d->has_value()) << d.status();
  const pb::Lease lead = (*d)->lease;
  EXPECT_EQ(lead.job_id(), gang_job);
  EXPECT_EQ(lead.rank(), 0);
  EXPECT_EQ(lead.gang().world_size(), 3);
  EXPECT_EQ(lead.gang().master_address(), "10.0.0.1:29511");
  EXPECT_EQ(std::vector<std::string>(lead.gang().workers().begin(), lead.gang().workers().end()),
            (std::vector<std::string>{"d", "b", "c"}));
  const pb::Job running = *store_->GetJob(gang_job);
  EXPECT_EQ(running.state(), pb::RUNNING);
  EXPECT_EQ(std::vector<std::string>(running.workers().begin(), running.workers().end()),
            (std::vector<std::string>{"d", "b", "c"}));
  const pb::JobEvent started = Events(gang_job).back();
  EXPECT_EQ(started.state_changed().state(), pb::RUNNING);
  EXPECT_EQ(started.state_changed().workers_size(), 3);
  EXPECT_NE(started.state_changed().message().find("running on 3 workers"), std::string::npos)
      << started.state_changed().message();
  EXPECT_EQ(*store_->CountWaiting(), 0);
  EXPECT_EQ(*store_->QueuedWorkerDemand(), 0);
  // b takes rank 1 at its next lease; c, stopping its wait, rank 2.
  auto b2 = store_->LeaseNext(GangWorker("b"), absl::Seconds(30), nullptr, until);
  ASSERT_TRUE(b2.ok() && b2->has_value()) << b2.status();
  EXPECT_EQ((*b2)->lease.rank(), 1);
  EXPECT_EQ((*b2)->lease.lease_id(), lead.lease_id());
  EXPECT_EQ((*b2)->job.spec().workers(), 3);
  auto c2 = store_->StopWaiting(GangWorker("c"), absl::Seconds(30));
  ASSERT_TRUE(c2.ok() && c2->has_value()) << c2.status();
  EXPECT_EQ((*c2)->lease.rank(), 2);
  EXPECT_EQ((*c2)->lease.gang().master_address(), "10.0.0.1:29511");
  // Taken once.
  auto c3 = store_->LeaseNext(GangWorker("c"), absl::Seconds(30), nullptr, until);
  ASSERT_TRUE(c3.ok()) << c3.status();
  EXPECT_FALSE(c3->has_value());
  // Every rank's lease is the job's: rank 0 reports, and it holds.
  EXPECT_TRUE(store_->CheckLease(gang_job, (*c2)->lease.lease_id()).ok());
}

// A rank given to a worker that never took it is worthless once the job
// left that group: the job re-queued, the rank leads nowhere.
TEST_P(JobStoreTest, AGangRankOfARequeuedJobIsNotTaken) {
  const absl::Time until = clock_.Now() + absl::Seconds(30);
  const std::string job = store_->CreateJob(GangSpec(2), "")->id();
  ASSERT_FALSE(store_->LeaseNext(GangWorker("a"), absl::Seconds(30), nullptr, until)->has_value());
  auto b = store_->LeaseNext(GangWorker("b"), absl::Seconds(30), nullptr, until);
  ASSERT_TRUE(b.ok() && b->has_value()) << b.status();
  ASSERT_TRUE(store_->ReleaseLease(job, (*b)->lease.lease_id()).ok());
  ASSERT_TRUE(store_->ExpireLeases(3).ok());
  EXPECT_EQ(store_->GetJob(job)->state(), pb::QUEUED);
  // a's rank was for the attempt that ended: a now waits again, and with
  // another worker forms the next group itself.
  auto a = store_->LeaseNext(GangWorker("a"), absl::Seconds(30), nullptr, until);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_FALSE(a->has_value());
  auto c = store_->LeaseNext(GangWorker("c"), absl::Seconds(30), nullptr, until);
  ASSERT_TRUE(c.ok() && c->has_value()) << c.status();
  EXPECT_EQ((*c)->lease.attempt(), 2);
  EXPECT_EQ((*c)->lease.gang().workers(1), "a");
  // A waiting row outlives its wait only briefly.
  clock_.Advance(absl::Seconds(31));
  ASSERT_FALSE(store_->LeaseNext(GangWorker("e"), absl::Seconds(30))->has_value());
  EXPECT_EQ(*store_->CountWaiting(), 0);
}

TEST_P(JobStoreTest, PriorityThenFifo) {
  pb::Job a = Create(0), b = Create(5), c = Create(0), d = Create(5);
  EXPECT_EQ(*store_->QueuePosition(b.id()), 1);
  EXPECT_EQ(*store_->QueuePosition(d.id()), 2);
  EXPECT_EQ(*store_->QueuePosition(a.id()), 3);
  EXPECT_EQ(Lease().lease.job_id(), b.id());
  EXPECT_EQ(Lease().lease.job_id(), d.id());
  EXPECT_EQ(*store_->QueuePosition(d.id()), 0);  // no longer queued
  EXPECT_EQ(Lease().lease.job_id(), a.id());
  EXPECT_EQ(Lease().lease.job_id(), c.id());
  EXPECT_FALSE(store_->LeaseNext(Worker("w"), absl::Seconds(1))->has_value());
  EXPECT_EQ(*store_->CountInState(pb::RUNNING), 4);
  EXPECT_EQ(*store_->CountInState(pb::QUEUED), 0);
}

TEST_P(JobStoreTest, RequestIdIsIdempotent) {
  pb::Job a = Create(0, "req-1");
  pb::Job b = Create(0, "req-1");
  EXPECT_EQ(a.id(), b.id());
  EXPECT_EQ(Events(a.id()).size(), 1u);  // one QUEUED event, not two
  EXPECT_NE(Create(0, "req-2").id(), a.id());
  EXPECT_NE(Create(0).id(), Create(0).id());  // no request id: always a new job
}

TEST_P(JobStoreTest, ExpiredLeaseRequeuesThenFails) {
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
  EXPECT_TRUE(final_job->has_end_time());
}

TEST_P(JobStoreTest, EventsAreNumberedAndSurviveReopen) {
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
  result.mutable_metrics()->set_val_accuracy(0.75f);
  ASSERT_TRUE(store_->FinishJob(job.id(), l.lease.lease_id(), result).ok());
  Open();
  auto events = store_->ReadEvents(job.id(), 1, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 8u);  // QUEUED, RUNNING, 5 progress, SUCCEEDED
  for (size_t i = 0; i < events->size(); ++i) EXPECT_EQ((*events)[i].sequence(), static_cast<int64_t>(i + 1));
  EXPECT_EQ((*events)[7].state_changed().state(), pb::SUCCEEDED);
  EXPECT_EQ((*events)[3].progress().step(), 1);
  auto tail = store_->ReadEvents(job.id(), 6, 100);
  ASSERT_EQ(tail->size(), 3u);
  EXPECT_EQ((*tail)[0].sequence(), 6);
  EXPECT_EQ(store_->ReadEvents(job.id(), 2, 2)->size(), 2u);
  auto reopened = store_->GetJob(job.id());
  EXPECT_EQ(reopened->state(), pb::SUCCEEDED);
  EXPECT_EQ(reopened->last_sequence(), 8);
  EXPECT_EQ(reopened->model_id(), "mdl-x");
  EXPECT_FLOAT_EQ(reopened->metrics().val_accuracy(), 0.75f);
  EXPECT_EQ(reopened->spec().backbone(), "resnet18");
  EXPECT_EQ(store_->GetResolvedJob(job.id())->spec().backbone(), "resnet18");
}

TEST_P(JobStoreTest, CancelQueuedAndRunning) {
  pb::Job queued = Create(0);
  EXPECT_EQ(store_->RequestCancel(queued.id())->state(), pb::CANCELLED);
  pb::Job running = Create(0);
  LeasedJob l = Lease();
  auto j = store_->RequestCancel(running.id());
  EXPECT_EQ(j->state(), pb::RUNNING);
  EXPECT_TRUE(j->cancel_requested());
  EXPECT_EQ(j->last_sequence(), 3);  // QUEUED, RUNNING, "cancellation requested"
  EXPECT_EQ(store_->RequestCancel(running.id())->last_sequence(), 3);  // asked once is enough
  EXPECT_TRUE(store_->RenewLease(running.id(), l.lease.lease_id(), absl::Seconds(30))->cancel_requested());
  // A cancelled job whose worker vanished ends CANCELLED, not re-queued.
  ASSERT_TRUE(store_->ReleaseLease(running.id(), l.lease.lease_id()).ok());
  auto expired = store_->ExpireLeases(3);
  ASSERT_EQ(expired->size(), 1u);
  EXPECT_EQ((*expired)[0].new_state, pb::CANCELLED);
  EXPECT_TRUE(absl::IsNotFound(store_->GetJob("job-missing").status()));
  EXPECT_TRUE(absl::IsNotFound(store_->RequestCancel("job-missing").status()));
}

TEST_P(JobStoreTest, ReturnedJobGivesItsAttemptBack) {
  pb::Job job = Create(0);
  LeasedJob first = Lease("w1");
  EXPECT_EQ(first.lease.attempt(), 1);
  auto returned = store_->ReturnJob(job.id(), first.lease.lease_id(), "SIGTERM");
  ASSERT_TRUE(returned.ok()) << returned.status();
  EXPECT_EQ(returned->state(), pb::QUEUED);
  EXPECT_EQ(returned->attempts(), 0);
  EXPECT_NE(Events(job.id()).back().state_changed().message().find("gave the job back (SIGTERM)"), std::string::npos);
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->CheckLease(job.id(), first.lease.lease_id())));
  // Preempted as often as it likes, it never fails for it.
  LeasedJob second = Lease("w2");
  EXPECT_EQ(second.lease.attempt(), 1);
  EXPECT_TRUE(store_->CheckLease(job.id(), second.lease.lease_id()).ok());
  // Given back after a cancel: that ends it.
  ASSERT_TRUE(store_->RequestCancel(job.id()).ok());
  auto cancelled = store_->ReturnJob(job.id(), second.lease.lease_id(), "SIGTERM");
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), pb::CANCELLED);
  EXPECT_TRUE(cancelled->has_end_time());
}

TEST_P(JobStoreTest, RunningEventCarriesTheResumePoint) {
  pb::Job job = Create(0);
  std::string asked;
  LeasedJob l = Lease("w1", [&](const std::string& id) {
    asked = id;
    return JobStore::ResumePoint{2, 17};
  });
  EXPECT_EQ(asked, job.id());
  EXPECT_EQ(l.job.spec().backbone(), "resnet18");
  const std::vector<pb::JobEvent> events = Events(job.id());
  ASSERT_EQ(events.size(), 2u);
  const pb::StateChanged& running = events[1].state_changed();
  EXPECT_EQ(running.state(), pb::RUNNING);
  EXPECT_EQ(running.resumed_epoch(), 2);
  EXPECT_EQ(running.resumed_step(), 17);
  EXPECT_EQ(running.attempt(), 1);
  EXPECT_EQ(running.worker_id(), "w1");
  EXPECT_NE(running.message().find("resuming at epoch 2, step 17"), std::string::npos);
  EXPECT_TRUE(store_->GetJob(job.id())->has_start_time());
}

TEST_P(JobStoreTest, RefusesWhatALeaseDoesNotAllow) {
  pb::Job job = Create(0);
  LeasedJob l = Lease();
  pb::JobResult running;
  running.set_state(pb::RUNNING);
  EXPECT_TRUE(absl::IsInvalidArgument(store_->FinishJob(job.id(), l.lease.lease_id(), running).status()));
  pb::JobEvent state;
  state.mutable_state_changed()->set_state(pb::SUCCEEDED);
  EXPECT_TRUE(absl::IsInvalidArgument(store_->AppendEvent(job.id(), l.lease.lease_id(), state).status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->RenewLease(job.id(), "lease-other", absl::Seconds(5)).status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->ReleaseLease(job.id(), "")));
  EXPECT_TRUE(absl::IsNotFound(store_->CheckLease("job-missing", l.lease.lease_id())));
  pb::JobResult failed;
  failed.set_state(pb::FAILED);
  failed.set_error("3 of 10 images could not be decoded");
  auto done = store_->FinishJob(job.id(), l.lease.lease_id(), failed);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->error(), "3 of 10 images could not be decoded");
  EXPECT_EQ(Events(job.id()).back().state_changed().message(), "3 of 10 images could not be decoded");
  // Finished: the lease holds nothing any more.
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->FinishJob(job.id(), l.lease.lease_id(), failed).status()));
  EXPECT_EQ(store_->RequestCancel(job.id())->state(), pb::FAILED);  // unchanged
}

TEST_P(JobStoreTest, JobsCarryTheirTenant) {
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
  EXPECT_EQ(store_->ListJobs({}, 2, "")->size(), 2u);
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
  EXPECT_EQ(store_->ListJobs({pb::RUNNING, pb::CANCELLED}, 100, "vision")->size(), 2u);
  EXPECT_EQ(store_->ListJobs({pb::RUNNING, pb::CANCELLED}, 100, "")->size(), 2u);
  EXPECT_EQ(store_->ListJobs({pb::SUCCEEDED}, 100, "")->size(), 0u);
}

// A database written before tenants: the jobs table without the column.
TEST(SqliteJobStoreTest, MigratesADatabaseWithoutTheTenantColumn) {
  const std::filesystem::path dir = testing::FreshTestDir("ft-store");
  util::FakeClock clock;
  const std::string path = (dir / "old.db").string();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  const std::string blob = Spec().SerializeAsString();
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

  std::unique_ptr<SqliteJobStore> store;
  for (int open = 0; open < 2; ++open) {  // the second open finds the column there
    store.reset();
    auto s = SqliteJobStore::Create({path, &clock});
    ASSERT_TRUE(s.ok()) << s.status();
    store = *std::move(s);
    auto old = store->GetJob("job-old");
    ASSERT_TRUE(old.ok()) << old.status();
    EXPECT_EQ(old->tenant(), "default");
    EXPECT_EQ(old->spec().backbone(), "resnet18");
    EXPECT_EQ(store->ListJobs({}, 100, "default")->size(), 1u + open);
    EXPECT_EQ(*store->CountActive("default"), 1 + open);
    if (open == 0) {
      EXPECT_EQ(store->CreateJob(Spec(0, "vision"), "")->tenant(), "vision");
      ASSERT_TRUE(store->CreateJob(Spec(), "").ok());
    }
  }
  EXPECT_EQ(store->ListJobs({}, 100, "vision")->size(), 1u);
  store.reset();
  std::filesystem::remove_all(dir);
}

// Stores on one fresh database, as server replicas would be.
class PostgresJobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pg = testing::SharedPostgres();
    ASSERT_TRUE(pg.ok()) << pg.status();
    pg_ = *pg;
    auto db = pg_->CreateDatabase();
    ASSERT_TRUE(db.ok()) << db.status();
    db_ = *db;
  }
  absl::StatusOr<std::unique_ptr<PostgresJobStore>> Open(int max_connections = 4) {
    return PostgresJobStore::Create({pg_->Url(db_), max_connections, &clock_});
  }
  // The rows of `sql` in this test's database.
  std::vector<std::vector<std::string>> Query(const std::string& sql) {
    auto rows = pg_->Query(db_, sql);
    EXPECT_TRUE(rows.ok()) << rows.status();
    return rows.ok() ? *rows : std::vector<std::vector<std::string>>();
  }
  // Drops every connection to this test's database (as a restart or a
  // failover does), and waits until they are gone.
  void DropConnections() {
    const std::string others =
        absl::StrCat("FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = '", db_, "'");
    ASSERT_TRUE(pg_->Query("postgres", absl::StrCat("SELECT pg_terminate_backend(pid) ", others)).ok());
    for (int i = 0; i < 500; ++i) {
      auto left = pg_->Query("postgres", absl::StrCat("SELECT COUNT(*) ", others));
      ASSERT_TRUE(left.ok()) << left.status();
      if ((*left)[0][0] == "0") return;
      absl::SleepFor(absl::Milliseconds(20));
    }
    FAIL() << "the connections to " << db_ << " did not go";
  }

  testing::PostgresServer* pg_ = nullptr;
  std::string db_;
  util::FakeClock clock_;
};

// Threads run `body(thread index)` at once; returns when all are done.
template <typename F>
void RunThreads(int n, F body) {
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) threads.emplace_back(body, i);
  for (auto& t : threads) t.join();
}

TEST_F(PostgresJobStoreTest, TwoReplicasLeaseEveryJobExactlyOnce) {
  auto a = Open(), b = Open();
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  PostgresJobStore* replicas[] = {a->get(), b->get()};
  constexpr int kJobs = 120;
  std::set<std::string> created;
  for (int i = 0; i < kJobs; ++i) {
    auto job = replicas[i % 2]->CreateJob(Spec(/*priority=*/i % 3), "");
    ASSERT_TRUE(job.ok()) << job.status();
    created.insert(job->id());
  }
  absl::Mutex mu;
  std::map<std::string, int> leased;
  std::vector<std::string> errors;
  RunThreads(8, [&](int t) {
    while (true) {
      auto l = replicas[t % 2]->LeaseNext(Worker(absl::StrCat("w", t)), absl::Seconds(60));
      absl::MutexLock lock(&mu);
      if (!l.ok()) errors.push_back(l.status().ToString());
      if (!l.ok() || !l->has_value()) return;
      ++leased[(*l)->lease.job_id()];
      EXPECT_EQ((*l)->lease.attempt(), 1);
    }
  });
  EXPECT_TRUE(errors.empty()) << errors.front();
  EXPECT_EQ(leased.size(), created.size());
  for (const auto& [id, times] : leased) {
    EXPECT_EQ(times, 1) << id << " was leased " << times << " times";
    EXPECT_EQ(created.count(id), 1u) << id;
  }
  EXPECT_EQ(*replicas[0]->CountInState(pb::RUNNING), kJobs);
  EXPECT_EQ(*replicas[1]->CountInState(pb::QUEUED), 0);
  // One RUNNING event each: a second lease would have appended another.
  EXPECT_EQ(Query("SELECT COUNT(*) FROM jobs WHERE last_seq = 2")[0][0], absl::StrCat(kJobs));
}

// The fan-out between replicas: what one store commits, another's change
// feed hears, once per committed transaction; after its connection drops it
// listens again and says that it may have missed some.
TEST_F(PostgresJobStoreTest, ChangeFeedHearsAnotherReplicasCommitsAndResyncsAfterADrop) {
  auto a = Open(), b = Open();
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  absl::Mutex mu;
  std::vector<std::pair<std::string, bool>> heard;
  int resyncs = 0;
  ASSERT_TRUE((*b)->StartChangeFeed(
                      [&](const std::string& job_id, bool queued) {
                        absl::MutexLock lock(&mu);
                        heard.emplace_back(job_id, queued);
                      },
                      [&] {
                        absl::MutexLock lock(&mu);
                        ++resyncs;
                      })
                  .ok());
  EXPECT_FALSE((*b)->StartChangeFeed([](const std::string&, bool) {}, [] {}).ok());
  auto listening = [&] {
    return Query(absl::StrCat("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = '", db_,
                              "' AND query LIKE 'LISTEN%'"))[0][0] == "1";
  };
  auto await = [&](auto done) {
    for (int i = 0; i < 500 && !done(); ++i) absl::SleepFor(absl::Milliseconds(20));
    return done();
  };
  ASSERT_TRUE(await(listening));
  auto count = [&](const std::string& id) {
    absl::MutexLock lock(&mu);
    return std::count_if(heard.begin(), heard.end(), [&](const auto& h) { return h.first == id; });
  };

  auto job = (*a)->CreateJob(Spec(), "");
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_TRUE(await([&] { return count(job->id()) == 1; }));
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(heard.back().second) << "a queued job is announced as queued";
  }
  auto lease = (*a)->LeaseNext(Worker("w"), absl::Seconds(60));
  ASSERT_TRUE(lease.ok() && lease->has_value());
  pb::JobEvent e;
  e.mutable_log()->set_message("hello");
  // Refused, so rolled back: no notification.
  EXPECT_FALSE((*a)->AppendEvent(job->id(), "lease-wrong", e).ok());
  ASSERT_TRUE((*a)->AppendEvent(job->id(), (*lease)->lease.lease_id(), e).ok());
  ASSERT_TRUE(await([&] { return count(job->id()) == 3; }));
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(count(job->id()), 3);
  {
    absl::MutexLock lock(&mu);
    EXPECT_FALSE(heard[1].second);
    EXPECT_FALSE(heard[2].second);
    EXPECT_EQ(resyncs, 0);
  }

  // The listener's connection dropped (a restart, a failover); not
  // DropConnections(), which waits for none to be left, and this one comes back.
  ASSERT_TRUE(pg_->Query("postgres", absl::StrCat("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                                                  "datname = '", db_, "' AND query LIKE 'LISTEN%'"))
                  .ok());
  ASSERT_TRUE(await([&] {
    absl::MutexLock lock(&mu);
    return resyncs == 1;
  }));
  ASSERT_TRUE(await(listening));
  ASSERT_TRUE((*a)->AppendEvent(job->id(), (*lease)->lease.lease_id(), e).ok());
  ASSERT_TRUE(await([&] { return count(job->id()) == 4; }));

  (*b)->StopChangeFeed();
  ASSERT_TRUE((*a)->AppendEvent(job->id(), (*lease)->lease.lease_id(), e).ok());
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(count(job->id()), 4);
}

TEST_F(PostgresJobStoreTest, ConcurrentAppendsGetGapFreeSequences) {
  auto a = Open(), b = Open();
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  PostgresJobStore* replicas[] = {a->get(), b->get()};
  auto job = replicas[0]->CreateJob(Spec(), "");
  ASSERT_TRUE(job.ok()) << job.status();
  auto lease = replicas[1]->LeaseNext(Worker("w"), absl::Seconds(60));
  ASSERT_TRUE(lease.ok() && lease->has_value());
  const std::string lease_id = (*lease)->lease.lease_id();
  constexpr int kThreads = 8, kEach = 40;
  absl::Mutex mu;
  std::vector<int64_t> sequences;
  RunThreads(kThreads, [&](int t) {
    int64_t previous = 0;
    for (int i = 0; i < kEach; ++i) {
      pb::JobEvent e;
      e.mutable_log()->set_message(absl::StrCat(t, "/", i));
      auto appended = replicas[(t + i) % 2]->AppendEvent(job->id(), lease_id, e);
      ASSERT_TRUE(appended.ok()) << appended.status();
      EXPECT_GT(appended->sequence(), previous);  // one writer's events stay in its order
      previous = appended->sequence();
      absl::MutexLock lock(&mu);
      sequences.push_back(appended->sequence());
    }
  });
  constexpr int kTotal = 2 + kThreads * kEach;  // after QUEUED and RUNNING
  std::sort(sequences.begin(), sequences.end());
  ASSERT_EQ(sequences.size(), static_cast<size_t>(kThreads * kEach));
  for (size_t i = 0; i < sequences.size(); ++i) ASSERT_EQ(sequences[i], static_cast<int64_t>(i + 3));
  auto events = replicas[0]->ReadEvents(job->id(), 1, 10000);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), static_cast<size_t>(kTotal));
  for (int i = 0; i < kTotal; ++i) EXPECT_EQ((*events)[i].sequence(), i + 1);
  EXPECT_EQ(replicas[1]->GetJob(job->id())->last_sequence(), kTotal);
}

TEST_F(PostgresJobStoreTest, OneRequestIdSubmittedToTwoReplicasAtOnceMakesOneJob) {
  auto a = Open(), b = Open();
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  PostgresJobStore* replicas[] = {a->get(), b->get()};
  for (int round = 0; round < 5; ++round) {
    const std::string request = absl::StrCat("req-", round);
    absl::Mutex mu;
    std::set<std::string> ids;
    RunThreads(6, [&](int t) {
      auto job = replicas[t % 2]->CreateJob(Spec(), request);
      ASSERT_TRUE(job.ok()) << job.status();
      absl::MutexLock lock(&mu);
      ids.insert(job->id());
    });
    ASSERT_EQ(ids.size(), 1u) << request;
    EXPECT_EQ(replicas[0]->ReadEvents(*ids.begin(), 1, 100)->size(), 1u);
  }
  EXPECT_EQ(replicas[0]->ListJobs({}, 100, "")->size(), 5u);
}

TEST_F(PostgresJobStoreTest, TwoReplicasSweepingAtOnceExpireEachLeaseOnce) {
  auto a = Open(), b = Open();
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  PostgresJobStore* replicas[] = {a->get(), b->get()};
  constexpr int kJobs = 40;
  for (int i = 0; i < kJobs; ++i) {
    ASSERT_TRUE(replicas[0]->CreateJob(Spec(), "").ok());
    ASSERT_TRUE(replicas[1]->LeaseNext(Worker("w"), absl::Seconds(30)).ok());
  }
  clock_.Advance(absl::Seconds(31));
  absl::Mutex mu;
  std::map<std::string, int> expired;
  RunThreads(6, [&](int t) {
    for (int i = 0; i < 3; ++i) {
      auto out = replicas[t % 2]->ExpireLeases(/*max_attempts=*/3);
      ASSERT_TRUE(out.ok()) << out.status();
      absl::MutexLock lock(&mu);
      for (const ExpiredLease& e : *out) {
        EXPECT_EQ(e.new_state, pb::QUEUED);
        ++expired[e.job_id];
      }
    }
  });
  EXPECT_EQ(expired.size(), static_cast<size_t>(kJobs));
  for (const auto& [id, times] : expired) EXPECT_EQ(times, 1) << id;
  EXPECT_EQ(*replicas[0]->CountInState(pb::QUEUED), kJobs);
  EXPECT_EQ(Query("SELECT COUNT(*) FROM jobs WHERE last_seq = 3")[0][0], absl::StrCat(kJobs));
}

TEST_F(PostgresJobStoreTest, MigratesADatabaseAtSchemaVersion1) {
  // What version 1 made, before tenants, with a job in it.
  const std::string spec = absl::BytesToHexString(Spec().SerializeAsString());
  Query(absl::StrCat(R"sql(
    CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
    INSERT INTO schema_migrations(version) VALUES (1);
    CREATE TABLE jobs (
      n BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id TEXT NOT NULL UNIQUE, request_id TEXT UNIQUE,
      state INTEGER NOT NULL, priority INTEGER NOT NULL, resolved BYTEA NOT NULL,
      attempts INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '', model_id TEXT NOT NULL DEFAULT '',
      metrics BYTEA, create_us BIGINT NOT NULL, start_us BIGINT NOT NULL DEFAULT 0,
      end_us BIGINT NOT NULL DEFAULT 0, worker_id TEXT NOT NULL DEFAULT '', lease_id TEXT NOT NULL DEFAULT '',
      lease_expires_us BIGINT NOT NULL DEFAULT 0, cancel_requested BOOLEAN NOT NULL DEFAULT false,
      last_seq BIGINT NOT NULL DEFAULT 0);
    CREATE INDEX jobs_queue ON jobs(state, priority DESC, n);
    CREATE TABLE events (job_id TEXT NOT NULL, seq BIGINT NOT NULL, data BYTEA NOT NULL,
      PRIMARY KEY (job_id, seq));
    INSERT INTO jobs(id, state, priority, resolved, create_us)
      VALUES ('job-old', 1, 0, decode(')sql",
                     spec, "', 'hex'), 1);"));
  ASSERT_EQ(PostgresJobStore::SchemaVersion(), 3);
  for (int open = 0; open < 2; ++open) {  // the second open finds nothing to do
    auto store = Open();
    ASSERT_TRUE(store.ok()) << store.status();
    auto old = (*store)->GetJob("job-old");
    ASSERT_TRUE(old.ok()) << old.status();
    EXPECT_EQ(old->tenant(), "default");
    EXPECT_EQ(old->spec().backbone(), "resnet18");
    EXPECT_EQ(*(*store)->CountActive("default"), 1 + open);
    if (open == 0) {
      EXPECT_EQ((*store)->CreateJob(Spec(0, "vision"), "")->tenant(), "vision");
      ASSERT_TRUE((*store)->CreateJob(Spec(), "").ok());
    }
    EXPECT_EQ(Query("SELECT version FROM schema_migrations ORDER BY version"),
              (std::vector<std::vector<std::string>>{{"1"}, {"2"}, {"3"}}));
  }
  EXPECT_EQ(Query("SELECT indexname FROM pg_indexes WHERE indexname = 'jobs_tenant'").size(), 1u);
}

TEST_F(PostgresJobStoreTest, ReplicasStartingAtOnceApplyEachMigrationOnce) {
  std::vector<absl::Status> started(6);
  RunThreads(6, [&](int t) { started[t] = Open().status(); });
  for (const absl::Status& s : started) EXPECT_TRUE(s.ok()) << s;
  std::vector<std::vector<std::string>> versions;
  for (int v = 1; v <= PostgresJobStore::SchemaVersion(); ++v) versions.push_back({absl::StrCat(v)});
  EXPECT_EQ(Query("SELECT version FROM schema_migrations ORDER BY version"), versions);
}

TEST_F(PostgresJobStoreTest, RefusesASchemaNewerThanItKnows) {
  ASSERT_TRUE(Open().ok());
  Query("INSERT INTO schema_migrations(version) VALUES (99)");
  auto store = Open();
  ASSERT_TRUE(absl::IsFailedPrecondition(store.status())) << store.status();
  EXPECT_NE(store.status().message().find("schema version 99, newer than this finetuned's 3"), std::string::npos)
      << store.status();
}

TEST_F(PostgresJobStoreTest, ReconnectsAfterLosingItsConnectionsAndIsUnavailableMeanwhile) {
  auto opened = Open(/*max_connections=*/2);
  ASSERT_TRUE(opened.ok()) << opened.status();
  PostgresJobStore& store = **opened;
  auto job = store.CreateJob(Spec(), "");
  ASSERT_TRUE(job.ok()) << job.status();
  auto lease = store.LeaseNext(Worker("w"), absl::Seconds(60));
  ASSERT_TRUE(lease.ok() && lease->has_value());
  const std::string lease_id = (*lease)->lease.lease_id();
  EXPECT_EQ(Query("SELECT DISTINCT application_name FROM pg_stat_activity WHERE datname = current_database() "
                  "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"),
            (std::vector<std::vector<std::string>>{{"finetuned"}}));

  // The database restarted, say: the next read and the next write reconnect.
  DropConnections();
  EXPECT_TRUE(store.GetJob(job->id()).ok());
  pb::JobEvent e;
  e.mutable_log()->set_message("after the drop");
  auto appended = store.AppendEvent(job->id(), lease_id, e);
  ASSERT_TRUE(appended.ok()) << appended.status();
  EXPECT_EQ(appended->sequence(), 3);

  // While it refuses connections, calls say so.
  ASSERT_TRUE(pg_->Query("postgres", absl::StrCat("ALTER DATABASE ", db_, " ALLOW_CONNECTIONS false")).ok());
  DropConnections();
  auto down = store.GetJob(job->id());
  EXPECT_TRUE(absl::IsUnavailable(down.status())) << down.status();
  EXPECT_NE(down.status().message().find("not currently accepting connections"), std::string::npos) << down.status();
  EXPECT_TRUE(absl::IsUnavailable(store.LeaseNext(Worker("w2"), absl::Seconds(1)).status()));
  EXPECT_TRUE(absl::IsUnavailable(store.AppendEvent(job->id(), lease_id, e).status()));

  // And it is back as soon as the database is.
  ASSERT_TRUE(pg_->Query("postgres", absl::StrCat("ALTER DATABASE ", db_, " ALLOW_CONNECTIONS true")).ok());
  auto back = store.GetJob(job->id());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->last_sequence(), 3);
  EXPECT_TRUE(store.AppendEvent(job->id(), lease_id, e).ok());
}

TEST_F(PostgresJobStoreTest, UrlsWithPasswordAndParameters) {
  // A role that must give its password, owning the database (and so its
  // public schema); the password has characters a URL must escape.
  const std::string role = "ft_pw_user";
  ASSERT_TRUE(pg_->Query("postgres", absl::StrCat("CREATE ROLE ", role, " LOGIN PASSWORD 'p@ss/word' IN ROLE ",
                                                  testing::PostgresServer::kPasswordUsers))
                  .ok());
  Query(absl::StrCat("ALTER DATABASE ", db_, " OWNER TO ", role));
  const std::string base = absl::StrCat("postgres://", role, ":p%40ss%2Fword@127.0.0.1:", pg_->port(), "/", db_);
  auto store = PostgresJobStore::Create({absl::StrCat(base, "?application_name=ft-test&connect_timeout=5"), 2, &clock_});
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->CreateJob(Spec(), "").ok());
  EXPECT_EQ(Query(absl::StrCat("SELECT DISTINCT application_name FROM pg_stat_activity WHERE usename = '", role,
                         "' AND backend_type = 'client backend'")),
            (std::vector<std::vector<std::string>>{{"ft-test"}}));
  // The password as a parameter works too.
  const std::string as_param = absl::StrCat("postgresql://", role, "@127.0.0.1:", pg_->port(), "/", db_,
                                            "?password=p%40ss%2Fword");
  EXPECT_TRUE(PostgresJobStore::Create({as_param, 1, &clock_}).ok());

  // A wrong password is refused, and the message does not show it.
  const std::string wrong = absl::StrCat("postgresql://", role, ":Wr0ng-Secret@127.0.0.1:", pg_->port(), "/", db_);
  auto refused = PostgresJobStore::Create({wrong, 1, &clock_});
  EXPECT_TRUE(absl::IsUnavailable(refused.status())) << refused.status();
  EXPECT_NE(refused.status().message().find("password authentication failed"), std::string::npos) << refused.status();
  EXPECT_NE(refused.status().message().find(":***@"), std::string::npos) << refused.status();
  EXPECT_EQ(refused.status().message().find("Wr0ng-Secret"), std::string::npos) << refused.status();
}

TEST_F(PostgresJobStoreTest, BadUrlsAreClearErrorsWithoutThePassword) {
  // Nothing listens on port 1.
  auto down = PostgresJobStore::Create({"postgresql://ft:Hunter2-Secret@127.0.0.1:1/jobs", 1, &clock_});
  EXPECT_TRUE(absl::IsUnavailable(down.status())) << down.status();
  EXPECT_NE(down.status().message().find("cannot connect to PostgreSQL at postgresql://ft:***@127.0.0.1:1/jobs"),
            std::string::npos)
      << down.status();
  EXPECT_NE(down.status().message().find("Connection refused"), std::string::npos) << down.status();
  EXPECT_EQ(down.status().message().find("Hunter2-Secret"), std::string::npos) << down.status();

  auto not_postgres = PostgresJobStore::Create({"mysql://ft:Hunter2-Secret@db/jobs", 1, &clock_});
  EXPECT_TRUE(absl::IsInvalidArgument(not_postgres.status())) << not_postgres.status();
  EXPECT_NE(not_postgres.status().message().find("not a PostgreSQL URL"), std::string::npos);
  EXPECT_EQ(not_postgres.status().message().find("Hunter2-Secret"), std::string::npos) << not_postgres.status();

  // Malformed: a bad escape in the password, an unknown parameter.
  auto escape = PostgresJobStore::Create({"postgresql://ft:Hunter2%zzSecret@db/jobs", 1, &clock_});
  EXPECT_TRUE(absl::IsInvalidArgument(escape.status())) << escape.status();
  EXPECT_NE(escape.status().message().find("percent-encoded"), std::string::npos) << escape.status();
  EXPECT_EQ(escape.status().message().find("Hunter2"), std::string::npos) << escape.status();
  auto param = PostgresJobStore::Create({"postgresql://db/jobs?no_such_option=1", 1, &clock_});
  EXPECT_TRUE(absl::IsInvalidArgument(param.status())) << param.status();
  EXPECT_NE(param.status().message().find("no_such_option"), std::string::npos) << param.status();
}

TEST(RedactDatabaseUrlTest, StarsOutThePasswordOnly) {
  EXPECT_EQ(RedactDatabaseUrl("postgresql://u:pw@h:5432/db"), "postgresql://u:***@h:5432/db");
  EXPECT_EQ(RedactDatabaseUrl("postgresql://u:p/w@h/db"), "postgresql://u:***@h/db");
  EXPECT_EQ(RedactDatabaseUrl("postgres://u@h/db"), "postgres://u@h/db");
  EXPECT_EQ(RedactDatabaseUrl("postgresql://h:5432/db"), "postgresql://h:5432/db");
  EXPECT_EQ(RedactDatabaseUrl("postgresql://h/db?sslmode=require&password=pw&application_name=x"),
            "postgresql://h/db?sslmode=require&password=***&application_name=x");
  EXPECT_EQ(RedactDatabaseUrl("postgresql://u:a@h/db?password=b"), "postgresql://u:***@h/db?password=***");
  EXPECT_TRUE(IsPostgresUrl("postgres://h/db"));
  EXPECT_TRUE(IsPostgresUrl("postgresql://h/db"));
  EXPECT_FALSE(IsPostgresUrl("sqlite:///var/finetuned.db"));
}

}  // namespace
}  // namespace ft::server
