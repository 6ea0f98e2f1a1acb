// The tenant objects belong to when nothing says otherwise.
#ifndef FT_COMMON_UTIL_TENANT_H_
#define FT_COMMON_UTIL_TENANT_H_

#include <string>

#include "absl/strings/string_view.h"

namespace ft::util {

// Without --auth-file every caller is in this tenant, and jobs, models and
// datasets stored before tenants existed belong to it: that keeps old data
// directories working unchanged.
inline constexpr char kDefaultTenant[] = "default";

inline std::string TenantOrDefault(absl::string_view tenant) {
  return tenant.empty() ? std::string(kDefaultTenant) : std::string(tenant);
}

}  // namespace ft::util

#endif  // FT_COMMON_UTIL_TENANT_H_
