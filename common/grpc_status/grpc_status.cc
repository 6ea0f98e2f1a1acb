#include "common/grpc_status/grpc_status.h"

#include "absl/strings/str_cat.h"

namespace ft {
namespace {

constexpr absl::string_view kTruncated = "...[truncated]";

std::string Truncate(absl::string_view message) {
  if (message.size() <= kGrpcErrorMessageLimit) return std::string(message);
  size_t keep = kGrpcErrorMessageLimit - kTruncated.size();
  // Never cut a UTF-8 sequence in two: back up over continuation bytes.
  while (keep > 0 && (static_cast<unsigned char>(message[keep]) & 0xC0) == 0x80) --keep;
  return absl::StrCat(message.substr(0, keep), kTruncated);
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), Truncate(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view context) {
  if (status.ok()) return absl::OkStatus();
  const auto code = static_cast<absl::StatusCode>(status.error_code());
  if (context.empty()) return absl::Status(code, status.error_message());
  return absl::Status(code, absl::StrCat(context, ": ", status.error_message()));
}

}  // namespace ft
