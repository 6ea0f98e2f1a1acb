// absl::Status <-> grpc::Status, in one place for every side: the server's
// handlers, the worker's and the client's stubs.
#ifndef FT_COMMON_GRPC_STATUS_GRPC_STATUS_H_
#define FT_COMMON_GRPC_STATUS_GRPC_STATUS_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"

namespace ft {

// gRPC carries the message in a trailer, and peers refuse trailers of more
// than about 8 KiB; TF Serving truncates at the same length.
inline constexpr size_t kGrpcErrorMessageLimit = 1024;

// Canonical codes map one to one. A message longer than the limit keeps its
// head (where our messages name the problem) and ends in "...[truncated]".
grpc::Status ToGrpcStatus(const absl::Status& status);

// The reverse, for stubs. A non-empty `context` is prefixed ("fetching model
// m1: <server's message>"), so that a caller's error says what it was doing.
absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view context = "");

}  // namespace ft

#endif  // FT_COMMON_GRPC_STATUS_GRPC_STATUS_H_
