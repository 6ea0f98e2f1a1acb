#include "worker/agent/job_session.h"

#include <chrono>
#include <utility>

#include "common/grpc_status/grpc_status.h"

namespace ft::worker {
namespace {

constexpr auto kHeartbeatInterval = std::chrono::milliseconds(1000);
// The heartbeat thread sleeps in slices, so that Finish() waits for it a
// tenth of an interval at most.
constexpr int kHeartbeatSlices = 10;

}  // namespace

absl::StatusOr<std::unique_ptr<JobSession>> JobSession::Start(pb::WorkerGateway::Stub* stub, const pb::Lease& lease,
                                                              const std::string& worker_id) {
  std::unique_ptr<JobSession> session(new JobSession());
  // Not started: the destructor leaves the stream alone if hello fails.
  session->finished_ = true;
  session->stream_ = stub->RunJob(&session->context_);
  pb::WorkerMessage hello;
  hello.mutable_hello()->set_lease_id(lease.lease_id());
  hello.mutable_hello()->set_job_id(lease.job_id());
  hello.mutable_hello()->set_worker_id(worker_id);
  if (!session->Write(hello)) return absl::UnavailableError("RunJob stream closed at hello");
  session->finished_ = false;
  JobSession* s = session.get();
  s->reader_ = std::thread([s] { s->ReadUntilClosed(); });
  s->heartbeat_ = std::thread([s] { s->BeatUntilDone(); });
  return session;
}

JobSession::~JobSession() {
  if (!finished_) Finish().IgnoreError();
}

bool JobSession::Write(const pb::WorkerMessage& message) {
  absl::MutexLock lock(&write_mu_);
  return stream_->Write(message);
}

void JobSession::ReadUntilClosed() {
  pb::ServerMessage m;
  while (stream_->Read(&m)) {
    if (m.has_cancel()) cancel_ = true;
    if (m.lease_lost()) lease_lost_ = true;
  }
  if (!done_) lease_lost_ = true;
}

void JobSession::BeatUntilDone() {
  pb::WorkerMessage heartbeat;
  heartbeat.mutable_heartbeat();
  while (!done_) {
    if (!Write(heartbeat)) break;
    for (int i = 0; i < kHeartbeatSlices && !done_; ++i) {
      std::this_thread::sleep_for(kHeartbeatInterval / kHeartbeatSlices);
    }
  }
}

bool JobSession::SendEvent(pb::JobEvent event) {
  pb::WorkerMessage m;
  *m.mutable_event() = std::move(event);
  return Write(m);
}

bool JobSession::SendResult(const pb::JobResult& result) {
  pb::WorkerMessage m;
  *m.mutable_result() = result;
  return Write(m);
}

absl::Status JobSession::Finish() {
  finished_ = true;
  done_ = true;
  {
    absl::MutexLock lock(&write_mu_);
    stream_->WritesDone();
  }
  heartbeat_.join();
  reader_.join();
  return FromGrpcStatus(stream_->Finish(), "reporting the result");
}

}  // namespace ft::worker
