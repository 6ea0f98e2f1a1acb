#ifndef FT_SERVER_API_STATUS_H_
#define FT_SERVER_API_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace ft::server {

// The one place an absl::Status becomes a gRPC status. Canonical codes map
// one to one; the message is kept as it is, since it names the problem.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace ft::server

#endif  // FT_SERVER_API_STATUS_H_
