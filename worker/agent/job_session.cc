#include "worker/agent/job_session.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/grpc_status/grpc_status.h"
#include "common/util/log.h"

namespace ft::worker {
namespace {

// Log and epoch events kept while the stream is down.
constexpr size_t kMaxPendingEvents = 1000;

// A stream that closed this way may open again: the server is down,
// restarting or overloaded. Anything else (FAILED_PRECONDITION: the lease
// is gone; OK before a result) is the lease's end.
bool MayComeBack(const grpc::Status& s) {
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::UNKNOWN:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return true;
    default:
      return false;
  }
}

}  // namespace

JobSession::JobSession(pb::WorkerGateway::Stub* stub, const pb::Lease& lease, const std::string& worker_id,
                       const JobSessionOptions& options)
    : stub_(stub), lease_(lease), worker_id_(worker_id), options_(options) {}

absl::StatusOr<std::unique_ptr<JobSession>> JobSession::Start(pb::WorkerGateway::Stub* stub, const pb::Lease& lease,
                                                              const std::string& worker_id,
                                                              const JobSessionOptions& options) {
  std::unique_ptr<JobSession> session(new JobSession(stub, lease, worker_id, options));
  // Not started: the destructor leaves the stream alone if hello fails.
  session->finished_ = true;
  Connection connection;
  if (grpc::Status s = session->Open(&connection); !s.ok()) {
    return absl::UnavailableError(absl::StrCat("RunJob stream closed at hello: ", s.error_message()));
  }
  {
    absl::MutexLock lock(&session->mu_);
    session->Install(std::move(connection));
  }
  session->finished_ = false;
  JobSession* s = session.get();
  s->reader_ = std::thread([s] { s->ReadUntilClosed(); });
  s->heartbeat_ = std::thread([s] { s->BeatUntilDone(); });
  return session;
}

JobSession::~JobSession() {
  if (!finished_) Finish().IgnoreError();
}

grpc::Status JobSession::Open(Connection* connection) {
  connection->context = std::make_unique<grpc::ClientContext>();
  connection->stream = stub_->RunJob(connection->context.get());
  pb::WorkerMessage hello;
  hello.mutable_hello()->set_lease_id(lease_.lease_id());
  hello.mutable_hello()->set_job_id(lease_.job_id());
  hello.mutable_hello()->set_worker_id(worker_id_);
  if (connection->stream->Write(hello)) return grpc::Status::OK;
  const grpc::Status status = connection->stream->Finish();
  return status.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "the stream closed at hello") : status;
}

void JobSession::Install(Connection connection) {
  // The old stream goes before its context.
  stream_ = std::move(connection.stream);
  context_ = std::move(connection.context);
  connected_ = true;
  ++generation_;
  // What waited while the stream was down goes first, in order.
  while (!pending_.empty() && stream_->Write(pending_.front())) pending_.pop_front();
}

void JobSession::LoseLease() { lease_lost_ = true; }

void JobSession::MarkLeaseLost() {
  absl::MutexLock lock(&mu_);
  LoseLease();
}

void JobSession::ReadUntilClosed() {
  while (true) {
    Stream* stream;
    {
      absl::MutexLock lock(&mu_);
      stream = stream_.get();
    }
    pb::ServerMessage m;
    while (stream->Read(&m)) {
      if (m.has_cancel()) cancel_ = true;
      if (m.lease_lost()) MarkLeaseLost();
    }
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      connected_ = false;
      status = stream->Finish();
      final_status_ = status;
      // The end: Finish() began, the last word was sent, or the lease is gone.
      if (done_ || ended_ || lease_lost_) break;
      if (!MayComeBack(status)) {
        LoseLease();
        break;
      }
    }
    util::Log("warning", "finetune-worker", "the job's stream broke; reconnecting with backoff",
              {{"job_id", lease_.job_id()}, {"error", status.error_message()}});
    if (!Reconnect()) break;
    util::Log("info", "finetune-worker", "the job's stream is back", {{"job_id", lease_.job_id()}});
  }
  reader_done_.Notify();
}

bool JobSession::Reconnect() {
  const absl::Time give_up = absl::Now() + options_.reconnect_for;
  absl::Duration backoff = options_.initial_backoff;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto over = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ || lease_lost_.load(); };
      if (mu_.AwaitWithTimeout(absl::Condition(&over), backoff)) return false;
      if (absl::Now() >= give_up) {
        util::Log("warning", "finetune-worker", "the job's stream stayed down; giving the lease up",
                  {{"job_id", lease_.job_id()}, {"error", final_status_.error_message()}});
        LoseLease();
        return false;
      }
    }
    backoff = std::min(backoff * 2, options_.max_backoff);
    // Outside mu_: a server that does not answer must not hold up the
    // job's events meanwhile.
    Connection connection;
    const grpc::Status opened = Open(&connection);
    absl::MutexLock lock(&mu_);
    if (opened.ok() && (done_ || lease_lost_)) {
      connection.context->TryCancel();
      connection.stream->Finish();
      return false;
    }
    if (opened.ok()) {
      Install(std::move(connection));
      return true;
    }
    final_status_ = opened;
    if (!MayComeBack(opened)) {
      LoseLease();
      return false;
    }
  }
}

void JobSession::BeatUntilDone() {
  pb::WorkerMessage heartbeat;
  heartbeat.mutable_heartbeat();
  absl::MutexLock lock(&mu_);
  auto over = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ || lease_lost_.load(); };
  while (!over()) {
    // A failed write is the reader's to notice.
    if (connected_) stream_->Write(heartbeat);
    mu_.AwaitWithTimeout(absl::Condition(&over), options_.heartbeat_interval);
  }
}

bool JobSession::SendEvent(pb::JobEvent event) {
  pb::WorkerMessage m;
  *m.mutable_event() = std::move(event);
  absl::MutexLock lock(&mu_);
  if (connected_ && pending_.empty() && stream_->Write(m)) return true;
  if (!m.event().has_progress() && !lease_lost_ && pending_.size() < kMaxPendingEvents) {
    pending_.push_back(std::move(m));
  }
  return false;
}

bool JobSession::SendLast(const pb::WorkerMessage& message, absl::Duration wait) {
  const absl::Time deadline = absl::Now() + wait;
  absl::MutexLock lock(&mu_);
  while (!lease_lost_ && !done_) {
    if (connected_ && pending_.empty() && stream_->Write(message)) {
      ended_ = true;
      return true;
    }
    const int64_t generation = generation_;
    auto changed = [this, generation]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return generation_ != generation || lease_lost_.load() || done_;
    };
    if (!mu_.AwaitWithDeadline(absl::Condition(&changed), deadline)) return false;
  }
  return false;
}

bool JobSession::SendResult(const pb::JobResult& result, absl::Duration wait) {
  pb::WorkerMessage m;
  *m.mutable_result() = result;
  return SendLast(m, wait);
}

bool JobSession::SendRelease(const std::string& reason, absl::Duration wait) {
  pb::WorkerMessage m;
  m.mutable_release()->set_reason(reason);
  return SendLast(m, wait);
}

absl::Status JobSession::Finish() {
  finished_ = true;
  {
    absl::MutexLock lock(&mu_);
    done_ = true;
    if (connected_) stream_->WritesDone();
  }
  heartbeat_.join();
  if (!reader_done_.WaitForNotificationWithTimeout(options_.finish_timeout)) {
    absl::MutexLock lock(&mu_);
    context_->TryCancel();
  }
  reader_.join();
  absl::MutexLock lock(&mu_);
  return FromGrpcStatus(final_status_, "reporting the result");
}

}  // namespace ft::worker
