#ifndef FT_COMMON_UTIL_FILES_H_
#define FT_COMMON_UTIL_FILES_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ft::util {

// NOT_FOUND when missing; RESOURCE_EXHAUSTED when larger than max_bytes.
absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     size_t max_bytes = size_t{1} << 32);
// Writes to `path.tmp-<random>`, fsyncs, then renames, so readers never see
// a torn file, and concurrent writers of one path (threads, or replicas on a
// shared file system) never write into each other's temp file: the last
// rename wins whole.
absl::Status WriteFileAtomic(const std::string& path, absl::string_view data);
absl::Status MakeDirs(const std::string& path);
// Directory of the running executable (from /proc/self/exe).
std::string ExecutableDir();

}  // namespace ft::util

#endif  // FT_COMMON_UTIL_FILES_H_
