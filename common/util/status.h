// Status helpers shared by every library: Abseil 20220623 has no status
// macros, so they are defined once here.
#ifndef FT_COMMON_UTIL_STATUS_H_
#define FT_COMMON_UTIL_STATUS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FT_CONCAT_INNER_(a, b) a##b
#define FT_CONCAT_(a, b) FT_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` is not OK.
#define FT_RETURN_IF_ERROR(expr)                   \
  do {                                             \
    ::absl::Status ft_status_ = (expr);            \
    if (!ft_status_.ok()) return ft_status_;       \
  } while (0)

// `lhs = *expr` when OK, else returns the error from the enclosing function.
#define FT_ASSIGN_OR_RETURN(lhs, expr) \
  FT_ASSIGN_OR_RETURN_IMPL_(FT_CONCAT_(ft_statusor_, __LINE__), lhs, expr)

#define FT_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                              \
  if (!statusor.ok()) return statusor.status();        \
  lhs = std::move(statusor).value()

#endif  // FT_COMMON_UTIL_STATUS_H_
