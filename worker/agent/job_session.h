#ifndef FT_WORKER_AGENT_JOB_SESSION_H_
#define FT_WORKER_AGENT_JOB_SESSION_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "finetune/v1/worker.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace ft::worker {

namespace pb = ::finetune::v1;

struct JobSessionOptions {
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // A stream that breaks (the server restarting) is opened again with the
  // same lease, backing off from initial_backoff to max_backoff, for this
  // long; then the lease counts as lost.
  absl::Duration reconnect_for = absl::Minutes(10);
  absl::Duration initial_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(5);
  // How long Finish() waits for the server to close the stream.
  absl::Duration finish_timeout = absl::Seconds(30);
};

// One lease's WorkerGateway.RunJob stream. It says hello, then a reader
// thread takes the server's cancel and lease_lost messages, and a heartbeat
// thread sends heartbeats, until Finish(). When the stream breaks for a
// reason that may pass (UNAVAILABLE: the server is down or restarting), the
// reader opens it again with the same lease and says hello again; the job
// goes on meanwhile. The lease is lost when the server says so (lease_lost,
// or a refusal such as FAILED_PRECONDITION), when the stream closes
// otherwise before a result, or when reconnecting takes longer than
// reconnect_for. Send*, MarkLeaseLost and the accessors are thread-safe;
// Finish() is for the owner's thread.
class JobSession {
 public:
  // Opens the stream on `stub` (not owned; it must outlive the session),
  // says hello for `lease` as `worker_id`, and starts both threads.
  // UNAVAILABLE when the stream closes at hello.
  static absl::StatusOr<std::unique_ptr<JobSession>> Start(pb::WorkerGateway::Stub* stub, const pb::Lease& lease,
                                                           const std::string& worker_id,
                                                           const JobSessionOptions& options = {});
  // Finish()es the session if its owner did not.
  ~JobSession();
  JobSession(const JobSession&) = delete;
  JobSession& operator=(const JobSession&) = delete;

  // Sends an event; false when it could not be sent now. While the stream
  // is down, log and epoch events wait (in order, up to a bound) and are
  // sent first once it is back; progress events are dropped.
  bool SendEvent(pb::JobEvent event);
  // The job's last word: its result, or its release ("preempted": the
  // server queues it again). Waits up to `wait` for a broken stream to come
  // back; false when it could not be sent.
  bool SendResult(const pb::JobResult& result, absl::Duration wait);
  bool SendRelease(const std::string& reason, absl::Duration wait);

  // Another call refused the lease (FAILED_PRECONDITION): the job stops,
  // and nothing more is reported.
  void MarkLeaseLost();

  // The server cancelled the job, or the lease is lost: stop working on it.
  bool cancelled() const { return cancel_ || lease_lost_; }
  bool lease_lost() const { return lease_lost_; }

  // Ends the heartbeats, closes this side of the stream, joins both threads
  // and returns the stream's status as "reporting the result: ...". Call
  // once, after the last Send.
  absl::Status Finish();

 private:
  using Stream = grpc::ClientReaderWriter<pb::WorkerMessage, pb::ServerMessage>;

  JobSession(pb::WorkerGateway::Stub* stub, const pb::Lease& lease, const std::string& worker_id,
             const JobSessionOptions& options);
  struct Connection {
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<Stream> stream;
  };
  // Opens a stream and says hello; the stream's status when that fails.
  grpc::Status Open(Connection* connection);
  // Makes `connection` the stream, and sends what waited for it.
  void Install(Connection connection) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool SendLast(const pb::WorkerMessage& message, absl::Duration wait);
  void LoseLease() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReadUntilClosed();
  // After the stream broke: opens it again. False when the session is over
  // (Finish, a lost lease, or reconnect_for ran out).
  bool Reconnect();
  void BeatUntilDone();

  pb::WorkerGateway::Stub* const stub_;
  const pb::Lease lease_;
  const std::string worker_id_;
  const JobSessionOptions options_;

  // gRPC allows one writer and one reader at a time on a stream: writes
  // happen under mu_, reads on reader_ alone, and only reader_ replaces the
  // stream (under mu_).
  absl::Mutex mu_;
  std::unique_ptr<grpc::ClientContext> context_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Stream> stream_ ABSL_GUARDED_BY(mu_);
  bool connected_ ABSL_GUARDED_BY(mu_) = false;
  // Bumped at every (re)connection.
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  // The result or release was written: the server closing the stream now is the end.
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  // Finish() began: heartbeats stop, and a closed stream is no lost lease.
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<pb::WorkerMessage> pending_ ABSL_GUARDED_BY(mu_);
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);

  std::atomic<bool> cancel_{false};
  std::atomic<bool> lease_lost_{false};
  bool finished_ = false;  // or never started
  absl::Notification reader_done_;
  std::thread reader_;
  std::thread heartbeat_;
};

}  // namespace ft::worker

#endif  // FT_WORKER_AGENT_JOB_SESSION_H_
