// Bearer tokens to identities. The identities come from --auth-file
// (re-read on SIGHUP) plus the built-in ones the server adds itself (the
// local workers' token); without --auth-file every call is "anonymous", an
// admin of tenant "default", as before there was authentication.
#ifndef FT_SERVER_AUTH_AUTHENTICATOR_H_
#define FT_SERVER_AUTH_AUTHENTICATOR_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/auth/identity.h"

namespace ft::server::auth {

struct AuthenticatorOptions {
  // The JSON file of identities (auth_file.h); empty turns authentication off.
  std::string auth_file;
  // Kept across reloads, never read from a file; only with auth_file.
  std::vector<Identity> builtin;
};

// Why a call was refused; the label of finetune_auth_failures_total.
enum class AuthFailure { kNone, kMissingToken, kMalformed, kUnknownToken, kPermissionDenied };
absl::string_view AuthFailureName(AuthFailure failure);

struct AuthResult {
  // Null unless the token is known (or authentication is off).
  std::shared_ptr<const Identity> identity;
  AuthFailure failure = AuthFailure::kNone;
  // OK, or UNAUTHENTICATED with the reason, never the token.
  absl::Status status;
};

// Thread-safe. A reload swaps the whole set at once: a call sees the old
// identities or the new ones, never a mix.
class Authenticator {
 public:
  // Loads auth_file; its first problem is the error (INVALID_ARGUMENT
  // naming the file and the entry).
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(const AuthenticatorOptions& options);

  bool enabled() const { return !options_.auth_file.empty(); }
  // Re-reads auth_file. On any error the identities in use stay, and the
  // error is returned for the log. A no-op without auth_file.
  absl::Status Reload();
  // `authorization` holds every value of the call's "authorization" header.
  AuthResult Authenticate(const std::vector<absl::string_view>& authorization) const;
  // How many identities the file gave at the last good load.
  int file_identities() const;

 private:
  using IdentitySet = std::vector<std::shared_ptr<const Identity>>;
  explicit Authenticator(const AuthenticatorOptions& options) : options_(options) {}
  absl::StatusOr<std::shared_ptr<const IdentitySet>> Load() const;

  const AuthenticatorOptions options_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const IdentitySet> identities_ ABSL_GUARDED_BY(mu_);
  int file_identities_ ABSL_GUARDED_BY(mu_) = 0;
};

// The identity of every call when authentication is off.
std::shared_ptr<const Identity> AnonymousIdentity();

}  // namespace ft::server::auth

#endif  // FT_SERVER_AUTH_AUTHENTICATOR_H_
