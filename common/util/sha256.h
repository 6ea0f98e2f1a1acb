#ifndef FT_COMMON_UTIL_SHA256_H_
#define FT_COMMON_UTIL_SHA256_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ft::util {

// Incremental SHA-256. Not thread-safe; one instance per stream.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(absl::string_view data);
  // Lower-case hex digest. Call once.
  std::string HexDigest();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

std::string Sha256Hex(absl::string_view data);
// NOT_FOUND when the file cannot be opened.
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace ft::util

#endif  // FT_COMMON_UTIL_SHA256_H_
