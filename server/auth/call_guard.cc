#include "server/auth/call_guard.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace ft::server::auth {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using grpc::experimental::InterceptionHookPoints;

// The id a state-changing call is about, from a request or response:
// the first non-empty of these string fields, at the top or one message
// down (upload headers, a worker's hello, a lease).
std::string ObjectId(const Message& m, int depth = 0) {
  static constexpr const char* kIdFields[] = {"job_id", "model_id", "id", "name"};
  const auto* descriptor = m.GetDescriptor();
  const auto* reflection = m.GetReflection();
  for (const char* name : kIdFields) {
    const FieldDescriptor* f = descriptor->FindFieldByName(name);
    if (f != nullptr && f->type() == FieldDescriptor::TYPE_STRING && !f->is_repeated()) {
      std::string v = reflection->GetString(m, f);
      if (!v.empty()) return v;
    }
  }
  if (depth > 0) return "";
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const FieldDescriptor* f = descriptor->field(i);
    if (f->type() != FieldDescriptor::TYPE_MESSAGE || f->is_repeated() || !reflection->HasField(m, f)) continue;
    std::string v = ObjectId(reflection->GetMessage(m, f), depth + 1);
    if (!v.empty()) return v;
  }
  return "";
}

absl::string_view MethodName(absl::string_view full) {
  const size_t slash = full.rfind('/');
  return slash == absl::string_view::npos ? full : full.substr(slash + 1);
}

}  // namespace

CallDecision Decide(const Authenticator& authenticator, absl::string_view method,
                    const std::vector<absl::string_view>& authorization) {
  CallDecision d;
  if (IsOpenMethod(method)) {
    d.identity = AnonymousIdentity();
    return d;
  }
  const RpcRule* rule = FindRpc(method);
  AuthResult who = authenticator.Authenticate(authorization);
  if (!who.status.ok()) {
    d.status = who.status;
    d.failure = who.failure;
    return d;
  }
  d.identity = who.identity;
  if (rule == nullptr) {
    // A method added to a proto without a row in the table is nobody's.
    d.status = absl::PermissionDeniedError(absl::StrCat(method, " is in no role's list (server/auth/rpc_table.cc)"));
    d.failure = AuthFailure::kPermissionDenied;
  } else if (!Allows(*rule, who.identity->role)) {
    d.status = absl::PermissionDeniedError(absl::StrCat("identity '", who.identity->name, "' (role ",
                                                        RoleName(who.identity->role), ") may not call ",
                                                        MethodName(method)));
    d.failure = AuthFailure::kPermissionDenied;
  }
  return d;
}

// One per call; gRPC deletes it when the call is done, after the status was sent.
class GuardInterceptor final : public grpc::experimental::Interceptor {
 public:
  GuardInterceptor(CallGuard* guard, grpc::experimental::ServerRpcInfo* info)
      : guard_(guard), ctx_(info->server_context()), method_(info->method() != nullptr ? info->method() : "") {
    const RpcRule* rule = FindRpc(method_);
    audited_ = rule != nullptr && rule->mutates && guard_->audit() != nullptr;
  }

  ~GuardInterceptor() override {
    if (began_) guard_->End(ctx_);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      std::vector<absl::string_view> authorization;
      auto* metadata = methods->GetRecvInitialMetadata();
      for (auto [it, end] = metadata->equal_range("authorization"); it != end; ++it) {
        authorization.emplace_back(it->second.data(), it->second.size());
      }
      CallDecision d = Decide(*guard_->options_.authenticator, method_, authorization);
      if (d.failure != AuthFailure::kNone) guard_->Refused(d.failure);
      identity_ = d.identity;
      began_ = true;
      guard_->Begin(ctx_, std::move(d));
    }
    if (audited_ && object_.empty()) {
      // The generated services pass their proto messages; Message is their
      // only base, so the pointer is the Message's.
      if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE) &&
          methods->GetRecvMessage() != nullptr) {
        object_ = ObjectId(*static_cast<const Message*>(methods->GetRecvMessage()));
      }
      if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE) &&
          methods->GetSendMessage() != nullptr) {
        object_ = ObjectId(*static_cast<const Message*>(methods->GetSendMessage()));
      }
    }
    if (audited_ && methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::StatusCode code = methods->GetSendStatus().error_code();
      // An OK call about nothing changed nothing (a LeaseJob poll that found
      // no job): no line.
      if (code != grpc::StatusCode::OK || !object_.empty()) {
        AuditRecord r;
        r.time = absl::Now();
        if (identity_ != nullptr) {
          r.identity = identity_->name;
          r.tenant = identity_->tenant;
          r.role = std::string(RoleName(identity_->role));
        }
        r.rpc = std::string(MethodName(method_));
        r.object = object_;
        r.code = code;
        guard_->audit()->Write(r);
      }
    }
    methods->Proceed();
  }

 private:
  CallGuard* const guard_;
  const grpc::ServerContextBase* const ctx_;
  const std::string method_;
  bool audited_ = false;
  bool began_ = false;
  std::shared_ptr<const Identity> identity_;
  std::string object_;
};

namespace {

class GuardInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit GuardInterceptorFactory(CallGuard* guard) : guard_(guard) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return new GuardInterceptor(guard_, info);
  }

 private:
  CallGuard* guard_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> CallGuard::InterceptorFactory() {
  return std::make_unique<GuardInterceptorFactory>(this);
}

void CallGuard::Begin(const grpc::ServerContextBase* ctx, CallDecision decision) {
  absl::MutexLock lock(&mu_);
  calls_[ctx] = std::move(decision);
}

void CallGuard::End(const grpc::ServerContextBase* ctx) {
  absl::MutexLock lock(&mu_);
  calls_.erase(ctx);
}

void CallGuard::Refused(AuthFailure failure) const {
  if (options_.on_failure) options_.on_failure(AuthFailureName(failure));
}

absl::Status CallGuard::Check(const grpc::ServerContextBase* ctx) const {
  absl::MutexLock lock(&mu_);
  auto it = calls_.find(ctx);
  if (it == calls_.end()) return absl::PermissionDeniedError("the call was not authenticated");
  return it->second.status;
}

std::shared_ptr<const Identity> CallGuard::IdentityOf(const grpc::ServerContextBase* ctx) const {
  absl::MutexLock lock(&mu_);
  auto it = calls_.find(ctx);
  if (it == calls_.end() || !it->second.status.ok()) return nullptr;
  return it->second.identity;
}

}  // namespace ft::server::auth
