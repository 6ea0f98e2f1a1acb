#ifndef FT_COMMON_DATASETS_SANDBOX_H_
#define FT_COMMON_DATASETS_SANDBOX_H_

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ft::datasets {

// The one containment check for the files a dataset names: the server's
// pre-flight, the upload extraction and the worker all call it (through
// ScanDataset), so that a file the server accepts is one the worker accepts.
//
// A path is judged where it really leads, as the kernel would open it: every
// symlink is followed, ".." after a symlink climbs from the link's target.
// A dangling symlink is followed too, since a file created at its target
// later would be opened through it. What does not exist is kept as written,
// so a missing image stays a decode error rather than a sandbox error.
//
// Paths are checked when scanned, not at open(): someone who can write into
// a dataset root while a job runs can still swap a file for a link between
// the check and the read. The worker checks again before it reads, which
// narrows that window but does not close it.
class DatasetSandbox {
 public:
  // `roots` are resolved once, here; one that cannot be resolved contains
  // nothing. `description` names them in errors ("the dataset roots (/a)").
  DatasetSandbox(const std::vector<std::string>& roots, std::string description);

  // `path` resolved, when it lies inside one of the roots (a root itself
  // counts). Otherwise PERMISSION_DENIED naming `what`:
  //   "<what> is a symlink to <link text>, outside <description>"
  //   "<what> resolves outside <description>"
  //   "<what> cannot be resolved (<why>)" (a symlink loop)
  // The message never says whether an outside path exists.
  absl::StatusOr<std::string> ResolveInside(const std::string& path, absl::string_view what) const;

  const std::string& description() const { return description_; }

 private:
  std::vector<std::filesystem::path> roots_;
  std::string description_;
};

}  // namespace ft::datasets

#endif  // FT_COMMON_DATASETS_SANDBOX_H_
