// Who is calling, and may they: decided once per call by a server
// interceptor, enforced by every handler.
//
// gRPC's server interceptors see each call's method and metadata before the
// handler runs, but cannot fail a call; AuthMetadataProcessor can, but only
// on TLS ports. So the interceptor decides (token -> identity -> the RPC
// table's verdict) and files the decision under the call's ServerContext,
// and each handler starts with Check(ctx), which finishes the call with the
// decision's status. The same interceptor counts refusals and writes the
// audit line when the call ends, with the status the client got.
#ifndef FT_SERVER_AUTH_CALL_GUARD_H_
#define FT_SERVER_AUTH_CALL_GUARD_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/server_interceptor.h"
#include "server/auth/audit_log.h"
#include "server/auth/authenticator.h"
#include "server/auth/identity.h"
#include "server/auth/rpc_table.h"

namespace ft::server::auth {

struct CallGuardOptions {
  // Not owned; must outlive the guard.
  const Authenticator* authenticator = nullptr;
  // Not owned; may be null (no --audit-log).
  AuditLog* audit = nullptr;
  // Called with AuthFailureName() of each refused call; may be empty.
  std::function<void(absl::string_view reason)> on_failure;
};

// The verdict on one call.
struct CallDecision {
  // Null when the caller is unknown.
  std::shared_ptr<const Identity> identity;
  // OK, UNAUTHENTICATED or PERMISSION_DENIED.
  absl::Status status;
  AuthFailure failure = AuthFailure::kNone;
};

// Decides without gRPC: for the interceptor and for unit tests.
CallDecision Decide(const Authenticator& authenticator, absl::string_view method,
                    const std::vector<absl::string_view>& authorization);

// Thread-safe; owned by the Server, outlives the gRPC server.
class CallGuard {
 public:
  explicit CallGuard(CallGuardOptions options) : options_(std::move(options)) {}

  // The interceptor to install on the server (before any other, so that the
  // decision exists when they run).
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> InterceptorFactory();

  // OK when the call may go on; else the status to finish it with. A call
  // the interceptor never saw is refused (fail closed).
  absl::Status Check(const grpc::ServerContextBase* ctx) const;
  // The caller of an allowed call (anonymous without --auth-file); null for
  // a refused or unknown call. Valid for as long as the handler holds it.
  std::shared_ptr<const Identity> IdentityOf(const grpc::ServerContextBase* ctx) const;

 private:
  friend class GuardInterceptor;
  void Begin(const grpc::ServerContextBase* ctx, CallDecision decision);
  void End(const grpc::ServerContextBase* ctx);
  void Refused(AuthFailure failure) const;
  AuditLog* audit() const { return options_.audit; }

  const CallGuardOptions options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<const grpc::ServerContextBase*, CallDecision> calls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ft::server::auth

#endif  // FT_SERVER_AUTH_CALL_GUARD_H_
