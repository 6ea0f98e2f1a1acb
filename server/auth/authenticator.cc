#include "server/auth/authenticator.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/util/sha256.h"
#include "server/auth/auth_file.h"

namespace ft::server::auth {
namespace {

constexpr absl::string_view kBearer = "bearer ";
// Far above any token we mint (43 characters), far below gRPC's metadata limit.
constexpr size_t kMaxAuthorizationBytes = 4096;

// No early exit, so the time taken does not tell how much of a guess matched.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

AuthResult Refused(AuthFailure failure, absl::string_view why) {
  AuthResult r;
  r.failure = failure;
  r.status = absl::UnauthenticatedError(why);
  return r;
}

}  // namespace

absl::string_view AuthFailureName(AuthFailure failure) {
  switch (failure) {
    case AuthFailure::kNone:
      return "none";
    case AuthFailure::kMissingToken:
      return "missing_token";
    case AuthFailure::kMalformed:
      return "malformed";
    case AuthFailure::kUnknownToken:
      return "unknown_token";
    case AuthFailure::kPermissionDenied:
      return "permission_denied";
  }
  return "unknown";
}

std::shared_ptr<const Identity> AnonymousIdentity() {
  static const auto* kAnonymous = new std::shared_ptr<const Identity>(
      std::make_shared<const Identity>(Identity{"anonymous", "default", Role::kAdmin, "", {}, {}}));
  return *kAnonymous;
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(const AuthenticatorOptions& options) {
  std::unique_ptr<Authenticator> a(new Authenticator(options));
  if (!a->enabled()) return a;
  auto loaded = a->Load();
  if (!loaded.ok()) return loaded.status();
  absl::MutexLock lock(&a->mu_);
  a->identities_ = *std::move(loaded);
  a->file_identities_ = static_cast<int>(a->identities_->size() - options.builtin.size());
  return a;
}

absl::StatusOr<std::shared_ptr<const Authenticator::IdentitySet>> Authenticator::Load() const {
  auto from_file = LoadAuthFile(options_.auth_file);
  if (!from_file.ok()) return from_file.status();
  auto set = std::make_shared<IdentitySet>();
  for (Identity& id : *from_file) set->push_back(std::make_shared<const Identity>(std::move(id)));
  for (const Identity& id : options_.builtin) set->push_back(std::make_shared<const Identity>(id));
  return std::shared_ptr<const IdentitySet>(std::move(set));
}

absl::Status Authenticator::Reload() {
  if (!enabled()) return absl::OkStatus();
  auto loaded = Load();
  if (!loaded.ok()) return loaded.status();
  absl::MutexLock lock(&mu_);
  identities_ = *std::move(loaded);
  file_identities_ = static_cast<int>(identities_->size() - options_.builtin.size());
  return absl::OkStatus();
}

int Authenticator::file_identities() const {
  absl::MutexLock lock(&mu_);
  return file_identities_;
}

AuthResult Authenticator::Authenticate(const std::vector<absl::string_view>& authorization) const {
  if (!enabled()) return AuthResult{AnonymousIdentity(), AuthFailure::kNone, absl::OkStatus()};
  if (authorization.empty()) {
    return Refused(AuthFailure::kMissingToken,
                   "no token: send the metadata 'authorization: Bearer <token>' (ftctl: --token-file FILE or "
                   "$FTCTL_TOKEN)");
  }
  if (authorization.size() > 1) return Refused(AuthFailure::kMalformed, "more than one authorization header");
  const absl::string_view value = authorization[0];
  if (value.size() > kMaxAuthorizationBytes) {
    return Refused(AuthFailure::kMalformed, "the authorization header is too long");
  }
  if (value.size() <= kBearer.size() || !absl::StartsWithIgnoreCase(value, kBearer)) {
    return Refused(AuthFailure::kMalformed, "the authorization header must be 'Bearer <token>'");
  }
  const std::string hash = util::Sha256Hex(absl::StripAsciiWhitespace(value.substr(kBearer.size())));
  std::shared_ptr<const IdentitySet> set;
  {
    absl::MutexLock lock(&mu_);
    set = identities_;
  }
  std::shared_ptr<const Identity> found;
  for (const auto& id : *set) {
    // Every entry is compared, match or not.
    if (ConstantTimeEquals(hash, id->token_sha256)) found = id;
  }
  if (found == nullptr) return Refused(AuthFailure::kUnknownToken, "unknown or revoked token");
  return AuthResult{std::move(found), AuthFailure::kNone, absl::OkStatus()};
}

}  // namespace ft::server::auth
