#ifndef FT_COMMON_UTIL_FLAG_NAMES_H_
#define FT_COMMON_UTIL_FLAG_NAMES_H_

#include <string>
#include <vector>

namespace ft::util {

// The documented flags are spelled with dashes (--data-dir); Abseil flag
// names cannot hold dashes. Rewrites "--data-dir=x" to "--data_dir=x" in
// flag names only (not values, not positional arguments) before parsing.
// The returned strings must outlive the char* view made from them.
inline std::vector<std::string> DashedFlagsToAbseil(int argc, char** argv) {
  std::vector<std::string> out;
  bool rest_positional = false;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") rest_positional = true;
    if (i > 0 && !rest_positional && a.size() > 2 && a[0] == '-' && a[1] == '-') {
      const size_t end = a.find('=');
      for (size_t j = 2; j < a.size() && j < end; ++j) {
        if (a[j] == '-') a[j] = '_';
      }
    }
    out.push_back(std::move(a));
  }
  return out;
}

}  // namespace ft::util

#endif  // FT_COMMON_UTIL_FLAG_NAMES_H_
