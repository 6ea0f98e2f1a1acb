#ifndef FT_SERVER_WORKERS_WORKER_TOOL_H_
#define FT_SERVER_WORKERS_WORKER_TOOL_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ft::server {

struct WorkerToolOptions {
  // The finetune-worker binary.
  std::string binary;
  // --threads for the tool.
  int threads = 1;
};

// Runs `finetune-worker --tool=NAME ARGS...` with `input` on stdin and
// returns its stdout. The server links neither LibTorch nor OpenCV, so the
// requests that need them (ValidateJob, Predict) run this way. A tool that
// fails prints "CODE: message" on stderr; that becomes the returned status.
// DEADLINE_EXCEEDED after `timeout` (the process is killed). Thread-safe.
class WorkerTool {
 public:
  explicit WorkerTool(const WorkerToolOptions& options) : options_(options) {}
  absl::StatusOr<std::string> Run(const std::string& tool, const std::vector<std::string>& args,
                                  const std::string& input, absl::Duration timeout) const;

 private:
  WorkerToolOptions options_;
};

}  // namespace ft::server

#endif  // FT_SERVER_WORKERS_WORKER_TOOL_H_
