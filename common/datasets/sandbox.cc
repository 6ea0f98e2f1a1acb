#include "common/datasets/sandbox.h"

#include <sys/stat.h>

#include <algorithm>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ft::datasets {
namespace fs = std::filesystem;
namespace {

// As Linux's own limit (MAXSYMLINKS): past it a path is a loop.
constexpr int kMaxSymlinks = 40;

// `path` as the kernel would walk it: like realpath(3), except that the part
// from the first missing component on is kept as written, ".." folded.
// weakly_canonical is not enough: it stops at a dangling symlink and keeps
// the link's own name, which looks inside while its target may not be.
absl::StatusOr<fs::path> Resolve(const fs::path& path) {
  std::error_code ec;
  const fs::path absolute = fs::absolute(path, ec);
  if (ec) return absl::InvalidArgumentError(ec.message());
  // Components still to walk, the next one last.
  std::vector<fs::path> todo;
  auto push = [&todo](const fs::path& p) {
    const std::vector<fs::path> parts(p.begin(), p.end());
    todo.insert(todo.end(), parts.rbegin(), parts.rend());
  };
  push(absolute);
  fs::path done("/");
  bool missing = false;
  int links = 0;
  while (!todo.empty()) {
    const fs::path part = std::move(todo.back());
    todo.pop_back();
    if (part.empty() || part == "." || part == "/") continue;
    if (part == "..") {
      done = done.parent_path();
      continue;
    }
    fs::path next = done / part;
    struct stat st;
    if (!missing) {
      if (::lstat(next.c_str(), &st) != 0) {
        // Missing, or not searchable by us: the kernel cannot open through
        // it either, so nothing past it can lead anywhere.
        missing = true;
      } else if (S_ISLNK(st.st_mode)) {
        if (++links > kMaxSymlinks) return absl::InvalidArgumentError("too many levels of symbolic links");
        const fs::path target = fs::read_symlink(next, ec);
        if (ec) return absl::InvalidArgumentError(ec.message());
        if (target.is_absolute()) done = "/";
        push(target);
        continue;
      }
    }
    done = std::move(next);
  }
  return done;
}

bool IsInside(const fs::path& p, const fs::path& root) {
  auto pi = p.begin();
  for (auto ri = root.begin(); ri != root.end(); ++ri, ++pi) {
    if (ri->empty()) continue;  // a trailing slash
    if (pi == p.end() || *pi != *ri) return false;
  }
  return true;
}

}  // namespace

DatasetSandbox::DatasetSandbox(const std::vector<std::string>& roots, std::string description)
    : description_(std::move(description)) {
  for (const auto& root : roots) {
    if (root.empty()) continue;  // "" would mean the working directory
    auto resolved = Resolve(root);
    if (resolved.ok()) roots_.push_back(*std::move(resolved));
  }
}

absl::StatusOr<std::string> DatasetSandbox::ResolveInside(const std::string& path, absl::string_view what) const {
  auto resolved = Resolve(path);
  if (!resolved.ok()) {
    return absl::PermissionDeniedError(absl::StrCat(what, " cannot be resolved (", resolved.status().message(), ")"));
  }
  const bool inside = std::any_of(roots_.begin(), roots_.end(),
                                  [&](const fs::path& root) { return IsInside(*resolved, root); });
  if (inside) return resolved->string();
  // The link's text is the dataset's own content, so naming it tells the
  // user nothing about the outside; where it leads is not said.
  std::error_code ec;
  if (fs::is_symlink(fs::symlink_status(path, ec))) {
    const fs::path target = fs::read_symlink(path, ec);
    if (!ec) {
      return absl::PermissionDeniedError(
          absl::StrCat(what, " is a symlink to ", target.string(), ", outside ", description_));
    }
  }
  return absl::PermissionDeniedError(absl::StrCat(what, " resolves outside ", description_));
}

}  // namespace ft::datasets
