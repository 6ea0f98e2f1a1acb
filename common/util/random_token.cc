#include "common/util/random_token.h"

#include <fstream>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"

namespace ft::util {
namespace {

constexpr size_t kTokenBytes = 32;

}  // namespace

absl::StatusOr<std::string> NewRandomToken() {
  std::ifstream in("/dev/urandom", std::ios::binary);
  std::string bytes(kTokenBytes, '\0');
  if (!in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()))) {
    return absl::UnavailableError("cannot read /dev/urandom for a token");
  }
  return absl::WebSafeBase64Escape(bytes);
}

}  // namespace ft::util
