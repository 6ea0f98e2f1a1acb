#include "common/util/log.h"

#include <atomic>
#include <cstdio>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ft::util {
namespace {

std::atomic<LogFormat> g_format{LogFormat::kText};
std::mutex g_mu;

void AppendJsonString(std::string* out, absl::string_view s) {
  out->push_back('"');
  for (char c : s) {
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out->append(buf);
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

}  // namespace

void SetLogFormat(LogFormat format) { g_format = format; }

bool ParseLogFormat(absl::string_view name, LogFormat* format) {
  if (name == "text") {
    *format = LogFormat::kText;
  } else if (name == "json") {
    *format = LogFormat::kJson;
  } else {
    return false;
  }
  return true;
}

void Log(absl::string_view level, absl::string_view component, absl::string_view message,
         std::initializer_list<LogField> fields) {
  const std::string ts = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  std::string line;
  if (g_format.load() == LogFormat::kJson) {
    line = "{\"ts\":";
    AppendJsonString(&line, ts);
    line += ",\"level\":";
    AppendJsonString(&line, level);
    line += ",\"component\":";
    AppendJsonString(&line, component);
    line += ",\"msg\":";
    AppendJsonString(&line, message);
    for (const auto& [key, value] : fields) {
      line += ",";
      AppendJsonString(&line, key);
      line += ":";
      AppendJsonString(&line, value);
    }
    line += "}\n";
  } else {
    line = absl::StrCat(ts, " ", level, " ", component, ": ", message);
    for (const auto& [key, value] : fields) absl::StrAppend(&line, " ", key, "=", value);
    line += "\n";
  }
  std::lock_guard<std::mutex> lock(g_mu);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace ft::util
