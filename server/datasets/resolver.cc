#include "server/datasets/resolver.h"

#include <filesystem>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/datasets/sandbox.h"
#include "common/util/status.h"

namespace ft::datasets {
namespace fs = std::filesystem;
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

absl::StatusOr<std::string> PercentDecode(absl::string_view s, const std::string& field) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%') {
      if (i + 2 >= s.size() + 0 || HexValue(s[i + 1]) < 0 || HexValue(s[i + 2]) < 0) {
        return absl::InvalidArgumentError(absl::StrCat(field, ": bad percent-escape in URI"));
      }
      out.push_back(static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  if (out.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": NUL byte in URI"));
  }
  return out;
}

}  // namespace

absl::StatusOr<DatasetUri> ParseDatasetUri(const std::string& uri, const std::string& field) {
  constexpr absl::string_view kScheme = "file://";
  constexpr absl::string_view kUploaded = "dataset://";
  if (uri.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  const bool uploaded = absl::StartsWith(uri, kUploaded);
  if (!uploaded && !absl::StartsWith(uri, kScheme)) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": unsupported URI '", uri, "'; use file:///absolute/path or dataset://NAME"));
  }
  absl::string_view rest = absl::string_view(uri).substr(uploaded ? kUploaded.size() : kScheme.size());
  absl::string_view query;
  if (size_t q = rest.find('?'); q != absl::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  DatasetUri out;
  auto path = PercentDecode(rest, field);
  if (!path.ok()) return path.status();
  if (uploaded) {
    // The name's syntax is the store's to check, with its own message.
    if (path->empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": '", uri, "' names no dataset"));
    out.dataset_name = *path;
  } else {
    out.path = *path;
  }
  if (!uploaded && (out.path.empty() || out.path[0] != '/')) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": '", uri, "' is not an absolute file URI (file:///abs/path)"));
  }
  for (absl::string_view kv : absl::StrSplit(query, '&', absl::SkipEmpty())) {
    std::vector<std::string> parts = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    const std::string key = parts[0];
    const std::string value = parts.size() > 1 ? parts[1] : "";
    if (key == "classes") {
      for (absl::string_view c : absl::StrSplit(value, ',', absl::SkipEmpty())) {
        auto name = PercentDecode(c, field);
        if (!name.ok()) return name.status();
        out.options.classes.push_back(*name);
      }
    } else if (key == "max_per_class" || key == "max_val_per_class") {
      int n = 0;
      if (!absl::SimpleAtoi(value, &n) || n < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": ", key, " must be a non-negative integer, got '", value, "'"));
      }
      (key == "max_per_class" ? out.options.max_per_class : out.options.max_val_per_class) = n;
    } else if (key == "val") {
      if (value != "split" && value != "dataset") {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": val must be 'dataset' or 'split', got '", value, "'"));
      }
      out.options.val_from_split = value == "split";
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": unknown query parameter '", key,
          "' (known: classes, max_per_class, max_val_per_class, val)"));
    }
  }
  return out;
}

absl::StatusOr<std::string> ResolveInside(const std::string& path,
                                          const std::vector<std::string>& roots,
                                          const std::string& what) {
  const DatasetSandbox sandbox(roots, "the server's allowed roots (--dataset-roots)");
  FT_ASSIGN_OR_RETURN(std::string resolved, sandbox.ResolveInside(path, absl::StrCat(what, " ", path)));
  std::error_code ec;
  if (!fs::exists(resolved, ec)) {
    return absl::NotFoundError(absl::StrCat(what, " ", path, " does not exist"));
  }
  return resolved;
}

}  // namespace ft::datasets
