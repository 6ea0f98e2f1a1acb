#ifndef FT_WORKER_AGENT_JOB_SESSION_H_
#define FT_WORKER_AGENT_JOB_SESSION_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "finetune/v1/worker.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace ft::worker {

namespace pb = ::finetune::v1;

// One lease's WorkerGateway.RunJob stream. It says hello, then a reader
// thread takes the server's cancel and lease_lost messages, and a heartbeat
// thread sends a heartbeat every second, until Finish(). The server closing
// the stream before Finish() counts as a lost lease. Send* and the
// accessors are thread-safe; Finish() is for the owner's thread.
class JobSession {
 public:
  // Opens the stream on `stub` (not owned; it must outlive the session),
  // says hello for `lease` as `worker_id`, and starts both threads.
  // UNAVAILABLE when the stream closes at hello.
  static absl::StatusOr<std::unique_ptr<JobSession>> Start(pb::WorkerGateway::Stub* stub, const pb::Lease& lease,
                                                           const std::string& worker_id);
  // Finish()es the session if its owner did not.
  ~JobSession();
  JobSession(const JobSession&) = delete;
  JobSession& operator=(const JobSession&) = delete;

  // False once the stream is broken.
  bool SendEvent(pb::JobEvent event);
  bool SendResult(const pb::JobResult& result);

  // The server cancelled the job, or the lease is lost: stop working on it.
  bool cancelled() const { return cancel_ || lease_lost_; }
  // The server said the lease is lost, or the stream broke before Finish().
  bool lease_lost() const { return lease_lost_; }

  // Ends the heartbeats, closes this side of the stream, joins both threads
  // and returns the stream's status as "reporting the result: ...". Call
  // once, after the last Send.
  absl::Status Finish();

 private:
  JobSession() = default;
  bool Write(const pb::WorkerMessage& message);
  void ReadUntilClosed();
  void BeatUntilDone();

  grpc::ClientContext context_;
  // Written under write_mu_, read by reader_ alone (gRPC allows one writer
  // and one reader at a time).
  std::unique_ptr<grpc::ClientReaderWriter<pb::WorkerMessage, pb::ServerMessage>> stream_;
  absl::Mutex write_mu_;
  std::atomic<bool> cancel_{false};
  std::atomic<bool> lease_lost_{false};
  // Set by Finish(): heartbeats stop, and a closed stream is no lost lease.
  std::atomic<bool> done_{false};
  bool finished_ = false;  // or never started
  std::thread reader_;
  std::thread heartbeat_;
};

}  // namespace ft::worker

#endif  // FT_WORKER_AGENT_JOB_SESSION_H_
