#include "server/auth/audit_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace ft::server::auth {

absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot open audit log ", path, ": ", std::strerror(errno)));
  std::FILE* file = ::fdopen(fd, "a");
  if (file == nullptr) {
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("cannot open audit log ", path));
  }
  return std::unique_ptr<AuditLog>(new AuditLog(file));
}

AuditLog::~AuditLog() {
  absl::MutexLock lock(&mu_);
  std::fclose(file_);
}

void AuditLog::Write(const AuditRecord& r) {
  nlohmann::json line = {
      {"time", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", r.time, absl::UTCTimeZone())},
      {"identity", r.identity},
      {"tenant", r.tenant},
      {"role", r.role},
      {"rpc", r.rpc},
      {"object", r.object},
      {"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(r.code))},
  };
  // Names come from the auth file and object ids from requests: replace
  // invalid UTF-8 rather than throw.
  const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  absl::MutexLock lock(&mu_);
  std::fputs(text.c_str(), file_);
  std::fflush(file_);
}

}  // namespace ft::server::auth
