// Bearer tokens: fresh random ones, and the form they are kept in.
#ifndef FT_COMMON_UTIL_RANDOM_TOKEN_H_
#define FT_COMMON_UTIL_RANDOM_TOKEN_H_

#include <string>

#include "absl/status/statusor.h"

namespace ft::util {

// 32 bytes from /dev/urandom, base64url without padding (43 characters, safe
// in a header, a file or an environment variable). UNAVAILABLE when
// /dev/urandom cannot be read: a token from a weaker source would be worse
// than none.
absl::StatusOr<std::string> NewRandomToken();

}  // namespace ft::util

#endif  // FT_COMMON_UTIL_RANDOM_TOKEN_H_
