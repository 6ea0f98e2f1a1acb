// Who a call comes from: the identities of --auth-file, their roles and the
// limits the tenants work enforces.
#ifndef FT_SERVER_AUTH_IDENTITY_H_
#define FT_SERVER_AUTH_IDENTITY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace ft::server::auth {

enum class Role { kAdmin, kUser, kViewer, kWorker };

// "admin", "user", "viewer", "worker".
absl::string_view RoleName(Role role);
// The reverse; false for anything else.
bool ParseRole(absl::string_view name, Role* role);

// Per-identity limits; unset means unlimited. Parsed and checked here,
// enforced by the tenants work.
struct Quota {
  std::optional<int64_t> max_queued_jobs;
  std::optional<int64_t> max_storage_bytes;
};

struct Identity {
  std::string name;
  std::string tenant;
  Role role = Role::kViewer;
  // Lower-case hex SHA-256 of the token. The token itself is never kept.
  std::string token_sha256;
  // When non-empty, the only absolute directories this identity's file://
  // datasets and weights may come from: they replace the server's
  // --dataset-roots for its calls, so a tenant can be held to its folders.
  std::vector<std::string> dataset_roots;
  Quota quota;
};

}  // namespace ft::server::auth

#endif  // FT_SERVER_AUTH_IDENTITY_H_
