// The first line of an error message: LibTorch's (and Gloo's, through c10d)
// carry a backtrace or context after it.
#ifndef FT_WORKER_TRAIN_FIRST_LINE_H_
#define FT_WORKER_TRAIN_FIRST_LINE_H_

#include <string>

namespace ft::worker {

inline std::string FirstLine(const std::string& text) { return text.substr(0, text.find('\n')); }

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_FIRST_LINE_H_
