// --audit-log: one JSON line per state-changing call.
#ifndef FT_SERVER_AUTH_AUDIT_LOG_H_
#define FT_SERVER_AUTH_AUDIT_LOG_H_

#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/support/status.h"

namespace ft::server::auth {

struct AuditRecord {
  absl::Time time;
  // Empty when the call had no known identity (refused before that).
  std::string identity;
  std::string tenant;
  std::string role;
  std::string rpc;
  // The job, model or dataset the call was about; may be empty.
  std::string object;
  grpc::StatusCode code = grpc::StatusCode::OK;
};

// Appends lines {"time","identity","tenant","role","rpc","object","code"}
// to a file, flushed after each line so that a crash loses none that were
// answered. Never a token: the record has no field for one. Thread-safe.
class AuditLog {
 public:
  // Opens `path` for appending (created 0600); UNAVAILABLE naming it.
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(const std::string& path);
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  void Write(const AuditRecord& record);

 private:
  explicit AuditLog(std::FILE* file) : file_(file) {}
  absl::Mutex mu_;
  std::FILE* file_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ft::server::auth

#endif  // FT_SERVER_AUTH_AUDIT_LOG_H_
