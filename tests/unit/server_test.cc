// An in-process Server on port 0 with a test worker client: the core path
// (submit, lease, events, watch, result) and the promise that slow calls
// never hold up fast ones, shown without timing: a tool double that blocks
// until released.
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/util/clock.h"
#include "finetune/v1/finetune.grpc.pb.h"
#include "finetune/v1/worker.grpc.pb.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/unit/postgres_fixture.h"
#include "tests/unit/test_dirs.h"

namespace ft::server {
namespace {
namespace fs = std::filesystem;
namespace pb = ::finetune::v1;

[[maybe_unused]] ::testing::Environment* const kPostgres =
    ::testing::AddGlobalTestEnvironment(new testing::PostgresEnvironment);

// A tool that blocks until released, and counts who is inside.
class BlockingTools final : public ToolRunner {
 public:
  absl::StatusOr<pb::ToolReply> Run(const pb::ToolRequest& request, absl::Duration) override {
    absl::MutexLock lock(&mu_);
    ++inside_;
    auto released = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return released_; };
    mu_.Await(absl::Condition(&released));
    --inside_;
    pb::ToolReply reply;
    reply.mutable_validation()->add_warnings("from the test double");
    return reply;
  }
  void AwaitInside(int n) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return inside_ >= n; };
    mu_.Await(absl::Condition(&enough));
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    released_ = true;
  }

 private:
  absl::Mutex mu_;
  int inside_ ABSL_GUARDED_BY(mu_) = 0;
  bool released_ ABSL_GUARDED_BY(mu_) = false;
};

// Generous: only a broken server makes a call wait this long.
std::chrono::system_clock::time_point Deadline() { return std::chrono::system_clock::now() + std::chrono::seconds(60); }

class ServerTest : public testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    testing::WriteTinyImageFolder(dir_ / "data/set");
  }
  void Start(int max_tools = 2, int max_queued = 8) {
    ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.data_dir = (dir_ / "var").string();
    o.database = database_;
    o.dataset_roots = {(dir_ / "data").string()};
    o.local_workers = 0;
    o.tool_runner = &tools_;
    o.max_tool_processes = max_tools;
    o.max_queued_tools = max_queued;
    auto s = Server::Create(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    channel_ = grpc::CreateChannel(server_->local_address(), grpc::InsecureChannelCredentials());
    api_ = pb::FineTune::NewStub(channel_);
    gateway_ = pb::WorkerGateway::NewStub(channel_);
  }
  void TearDown() override {
    tools_.Release();
    if (server_) server_->Shutdown(absl::Now() + absl::Seconds(5));
    server_.reset();
    TempDirTest::TearDown();
  }
  pb::JobSpec Spec() {
    pb::JobSpec spec;
    spec.set_backbone("resnet18");
    spec.set_dataset_uri("file://" + (dir_ / "data/set").string());
    spec.set_epochs(1);
    return spec;
  }
  pb::Job Submit() {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    pb::SubmitJobRequest req;
    *req.mutable_spec() = Spec();
    pb::Job job;
    grpc::Status s = api_->SubmitJob(&ctx, req, &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return job;
  }
  grpc::Status GetJob(const std::string& id, pb::Job* job) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    pb::GetJobRequest req;
    req.set_job_id(id);
    return api_->GetJob(&ctx, req, job);
  }
  std::vector<pb::JobEvent> Watch(const std::string& id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    pb::WatchJobRequest req;
    req.set_job_id(id);
    auto reader = api_->WatchJob(&ctx, req);
    std::vector<pb::JobEvent> out;
    pb::JobEvent e;
    while (reader->Read(&e)) out.push_back(e);
    grpc::Status s = reader->Finish();
    EXPECT_TRUE(s.ok()) << s.error_message();
    return out;
  }
  std::string Health(const std::string& service) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    grpc::GenericStub generic(channel_);
    std::string request;
    if (!service.empty()) request = std::string("\x0a") + static_cast<char>(service.size()) + service;
    grpc::Slice slice(request);
    grpc::ByteBuffer in(&slice, 1), out;
    absl::Notification done;
    grpc::Status status;
    generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &in, &out, [&](grpc::Status s) {
      status = s;
      done.Notify();
    });
    done.WaitForNotification();
    if (!status.ok()) return "error: " + status.error_message();
    std::vector<grpc::Slice> slices;
    out.Dump(&slices);
    std::string bytes;
    for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    return bytes == std::string("\x08\x01", 2) ? "SERVING" : "NOT_SERVING";
  }

  // The test worker: leases a job and plays a run of it over RunJob.
  void RunFakeWorker(int progress_events, pb::JobState final_state) {
    pb::LeaseJobRequest lreq;
    lreq.mutable_worker()->set_worker_id("test-worker");
    lreq.set_wait_seconds(5);
    pb::LeaseJobResponse lease;
    {
      grpc::ClientContext ctx;
      ctx.set_deadline(Deadline());
      ASSERT_TRUE(gateway_->LeaseJob(&ctx, lreq, &lease).ok());
    }
    ASSERT_TRUE(lease.leased());
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    auto stream = gateway_->RunJob(&ctx);
    pb::WorkerMessage m;
    m.mutable_hello()->set_job_id(lease.lease().job_id());
    m.mutable_hello()->set_lease_id(lease.lease().lease_id());
    m.mutable_hello()->set_worker_id("test-worker");
    ASSERT_TRUE(stream->Write(m));
    for (int i = 1; i <= progress_events; ++i) {
      pb::WorkerMessage e;
      e.mutable_event()->mutable_progress()->set_phase("train");
      e.mutable_event()->mutable_progress()->set_step(i);
      ASSERT_TRUE(stream->Write(e));
    }
    pb::WorkerMessage r;
    r.mutable_result()->set_state(final_state);
    r.mutable_result()->set_error("the test worker says so");
    ASSERT_TRUE(stream->Write(r));
    stream->WritesDone();
    pb::ServerMessage ignored;
    while (stream->Read(&ignored)) {
    }
    EXPECT_TRUE(stream->Finish().ok());
  }

  // Submit, a worker's run, live and replayed watches, through the server.
  void CheckSubmitLeaseEventsWatchAndResult() {
    Start();
    EXPECT_GT(server_->port(), 0);
    EXPECT_EQ(Health(""), "SERVING");
    const pb::Job job = Submit();
    EXPECT_EQ(job.state(), pb::QUEUED);
    // A watcher from the start sees everything, live, in order, then ends.
    std::vector<pb::JobEvent> live;
    std::thread watcher([&] { live = Watch(job.id()); });
    RunFakeWorker(/*progress_events=*/25, pb::FAILED);
    watcher.join();
    pb::Job done;
    ASSERT_TRUE(GetJob(job.id(), &done).ok());
    EXPECT_EQ(done.state(), pb::FAILED);
    EXPECT_EQ(done.error(), "the test worker says so");
    ASSERT_FALSE(live.empty());
    for (size_t i = 0; i < live.size(); ++i) EXPECT_EQ(live[i].sequence(), static_cast<int64_t>(i + 1));
    int steps = 0;
    for (const auto& e : live) steps += e.has_progress();
    EXPECT_EQ(steps, 25);
    EXPECT_EQ(live.back().sequence(), done.last_sequence());
    // A late watcher replays the same sequence.
    const auto replay = Watch(job.id());
    ASSERT_EQ(replay.size(), live.size());
    for (size_t i = 0; i < live.size(); ++i) EXPECT_EQ(replay[i].SerializeAsString(), live[i].SerializeAsString());
  }

  // ServerOptions::database for Start().
  std::string database_;
  BlockingTools tools_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::FineTune::Stub> api_;
  std::unique_ptr<pb::WorkerGateway::Stub> gateway_;
};

TEST_F(ServerTest, SubmitLeaseEventsWatchAndResult) {
  CheckSubmitLeaseEventsWatchAndResult();
  EXPECT_TRUE(fs::exists(dir_ / "var/finetuned.db"));
}

// The same through PostgresJobStore: --database switches every part of the
// server that keeps jobs and events.
TEST_F(ServerTest, SubmitLeaseEventsWatchAndResultOnPostgres) {
  auto pg = testing::SharedPostgres();
  ASSERT_TRUE(pg.ok()) << pg.status();
  auto db = (*pg)->CreateDatabase();
  ASSERT_TRUE(db.ok()) << db.status();
  database_ = (*pg)->Url(*db);
  CheckSubmitLeaseEventsWatchAndResult();
  EXPECT_FALSE(fs::exists(dir_ / "var/finetuned.db"));
  auto stored = (*pg)->Query(*db, "SELECT COUNT(*), MAX(state) FROM jobs");
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ((*stored)[0], (std::vector<std::string>{"1", std::to_string(pb::FAILED)}));
}

TEST_F(ServerTest, ABadDatabaseIsAStartupErrorWithoutThePassword) {
  ServerOptions o;
  o.listen = "127.0.0.1:0";
  o.data_dir = (dir_ / "var").string();
  o.local_workers = 0;
  o.tool_runner = &tools_;
  // Nothing listens on port 1.
  o.database = "postgresql://ft:Hunter2-Secret@127.0.0.1:1/jobs";
  auto down = Server::Create(o);
  EXPECT_TRUE(absl::IsUnavailable(down.status())) << down.status();
  EXPECT_NE(down.status().message().find("cannot connect to PostgreSQL at postgresql://ft:***@127.0.0.1:1/jobs"),
            std::string::npos)
      << down.status();
  EXPECT_EQ(down.status().message().find("Hunter2-Secret"), std::string::npos) << down.status();
  o.database = "sqlite:///tmp/x.db";
  auto other = Server::Create(o);
  EXPECT_TRUE(absl::IsInvalidArgument(other.status())) << other.status();
  EXPECT_NE(other.status().message().find("--database must be a postgresql://"), std::string::npos)
      << other.status();
  // A replica id names folders: nothing that could leave them.
  o.database = "";
  o.replica_id = "../b";
  auto bad_id = Server::Create(o);
  EXPECT_TRUE(absl::IsInvalidArgument(bad_id.status())) << bad_id.status();
  EXPECT_NE(bad_id.status().message().find("--replica-id must be"), std::string::npos) << bad_id.status();
}

TEST_F(ServerTest, SlowToolsNeverHoldUpFastCalls) {
  Start(/*max_tools=*/2, /*max_queued=*/8);
  const pb::Job job = Submit();
  // Eight validations: two run (and block), six wait in the tool queue.
  std::vector<std::thread> validations;
  std::vector<grpc::Status> results(8);
  for (int i = 0; i < 8; ++i) {
    validations.emplace_back([&, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(Deadline());
      pb::SubmitJobRequest req;
      *req.mutable_spec() = Spec();
      pb::ValidationReport report;
      results[static_cast<size_t>(i)] = api_->ValidateJob(&ctx, req, &report);
    });
  }
  tools_.AwaitInside(2);
  // While they are stuck, every fast call answers.
  pb::Job got;
  ASSERT_TRUE(GetJob(job.id(), &got).ok());
  EXPECT_EQ(got.state(), pb::QUEUED);
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    pb::ListJobsResponse list;
    ASSERT_TRUE(api_->ListJobs(&ctx, pb::ListJobsRequest(), &list).ok());
    EXPECT_EQ(list.jobs_size(), 1);
  }
  const pb::Job other = Submit();
  EXPECT_EQ(other.state(), pb::QUEUED);
  std::thread worker([&] { RunFakeWorker(3, pb::CANCELLED); });
  const auto events = Watch(job.id());
  worker.join();
  EXPECT_FALSE(events.empty());
  EXPECT_EQ(Health(""), "SERVING");
  // Then the tools finish, and every validation succeeds.
  tools_.Release();
  for (auto& t : validations) t.join();
  for (const auto& r : results) EXPECT_TRUE(r.ok()) << r.error_message();
}

TEST_F(ServerTest, AFullToolQueueIsResourceExhaustedWithTheNumbers) {
  // One tool process, no waiting room: while one validation runs, the next
  // is refused at once, with the numbers and the flags that set them.
  Start(/*max_tools=*/1, /*max_queued=*/0);
  grpc::Status first;
  std::thread running([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    pb::SubmitJobRequest req;
    *req.mutable_spec() = Spec();
    pb::ValidationReport report;
    first = api_->ValidateJob(&ctx, req, &report);
  });
  tools_.AwaitInside(1);
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline());
  pb::SubmitJobRequest req;
  *req.mutable_spec() = Spec();
  pb::ValidationReport report;
  const grpc::Status refused = api_->ValidateJob(&ctx, req, &report);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_NE(refused.error_message().find("1 are running and 0 waiting"), std::string::npos) << refused.error_message();
  EXPECT_NE(refused.error_message().find("--max-tool-processes 1, --max-queued-tools 0"), std::string::npos)
      << refused.error_message();
  tools_.Release();
  running.join();
  EXPECT_TRUE(first.ok()) << first.error_message();
}

TEST_F(ServerTest, DrainingIsNotServingWhileCallsStillWork) {
  Start();
  EXPECT_EQ(Health(""), "SERVING");
  EXPECT_EQ(Health("liveness"), "SERVING");
  server_->StartDraining();
  EXPECT_EQ(Health(""), "NOT_SERVING");
  EXPECT_EQ(Health("finetune.v1.FineTune"), "NOT_SERVING");
  EXPECT_EQ(Health("liveness"), "SERVING");
  // Still answering while it drains.
  const pb::Job job = Submit();
  pb::Job got;
  EXPECT_TRUE(GetJob(job.id(), &got).ok());
  server_->Shutdown(absl::Now() + absl::Seconds(5));
  EXPECT_FALSE(GetJob(job.id(), &got).ok());
}

}  // namespace
}  // namespace ft::server
