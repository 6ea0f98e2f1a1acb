#ifndef FT_SERVER_DATASETS_RESOLVER_H_
#define FT_SERVER_DATASETS_RESOLVER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/datasets/layout.h"

namespace ft::datasets {

// A parsed file:// or dataset:// URI with its query options.
struct DatasetUri {
  std::string path;  // file://: as written, percent-decoded
  std::string dataset_name;  // dataset://NAME (an uploaded dataset); path is then empty
  LayoutOptions options;
};

// Parses "file:///abs/dir?classes=a,b&max_per_class=N&max_val_per_class=N&val=split",
// or "dataset://NAME" with the same query parameters. val=split (default
// val=dataset) holds validation out of train and makes the dataset's own
// val images its test split.
// INVALID_ARGUMENT naming `field` on a malformed URI.
absl::StatusOr<DatasetUri> ParseDatasetUri(const std::string& uri, const std::string& field);

// The sandbox for a path the user typed (a file:// dataset or weights file):
// DatasetSandbox::ResolveInside over `roots`, which must also exist.
// Returns the resolved path. PERMISSION_DENIED when outside (also for paths
// that do not exist, so nothing leaks about the outside), NOT_FOUND when
// inside but missing.
absl::StatusOr<std::string> ResolveInside(const std::string& path,
                                          const std::vector<std::string>& roots,
                                          const std::string& what);

}  // namespace ft::datasets

#endif  // FT_SERVER_DATASETS_RESOLVER_H_
