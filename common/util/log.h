#ifndef FT_COMMON_UTIL_LOG_H_
#define FT_COMMON_UTIL_LOG_H_

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"

namespace ft::util {

// Structured log lines on stderr: "2026-11-28T23:00:11.123Z info finetuned:
// message key=value" in text mode, or one JSON object per line in json mode
// (ts, level, component, msg, and the fields: job_id, request_id, ...).
// The format is process-wide, set once from --log-format in main().
// Thread-safe.
enum class LogFormat { kText, kJson };

void SetLogFormat(LogFormat format);
// "text" or "json"; false for anything else.
bool ParseLogFormat(absl::string_view name, LogFormat* format);

using LogField = std::pair<absl::string_view, std::string>;
void Log(absl::string_view level, absl::string_view component, absl::string_view message,
         std::initializer_list<LogField> fields = {});

}  // namespace ft::util

#endif  // FT_COMMON_UTIL_LOG_H_
