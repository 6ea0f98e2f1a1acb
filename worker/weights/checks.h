// Internal helpers of ft::weights, free of torch: overflow-checked size
// arithmetic and quoting of names taken from untrusted files.
#ifndef FT_WORKER_WEIGHTS_CHECKS_H_
#define FT_WORKER_WEIGHTS_CHECKS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <exception>
#include <new>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace ft::worker::weights_internal {

// Most dimensions a tensor in a weight file may have.
inline constexpr size_t kMaxDims = 64;

// [offset, offset + length) lies within [0, limit), without overflow.
inline bool InRange(uint64_t offset, uint64_t length, uint64_t limit) {
  return offset <= limit && length <= limit - offset;
}

// Product of `sizes` into *numel; false when a size is negative or it overflows.
inline bool CheckedNumel(const std::vector<int64_t>& sizes, int64_t* numel) {
  int64_t n = 1;
  for (int64_t s : sizes) {
    if (s < 0 || __builtin_mul_overflow(n, s, &n)) return false;
  }
  *numel = n;
  return true;
}

// numel * element_size into *nbytes; false on a negative count or overflow.
inline bool CheckedBytes(int64_t numel, size_t element_size, uint64_t* nbytes) {
  if (numel < 0) return false;
  return !__builtin_mul_overflow(static_cast<uint64_t>(numel),
                                 static_cast<uint64_t>(element_size), nbytes);
}

// A name read from a file, quoted, escaped and shortened for an error message.
inline std::string Quote(absl::string_view s) {
  constexpr size_t kMaxShown = 200;
  std::string out = absl::StrCat("'", absl::CHexEscape(s.substr(0, kMaxShown)), "'");
  if (s.size() > kMaxShown) out += "...";
  return out;
}

// Runs `parse` with every exception turned into a Status naming `what`: the
// readers' promise that nothing escapes. `Error` is LibTorch's c10::Error
// (passed in so that this header needs no torch include).
template <typename Error, typename F>
auto GuardExceptions(const std::string& what, F parse) -> decltype(parse()) {
  try {
    return parse();
  } catch (const Error& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  }
}

}  // namespace ft::worker::weights_internal

#endif  // FT_WORKER_WEIGHTS_CHECKS_H_
