#ifndef FT_SERVER_WORKERS_WORKER_TOOL_H_
#define FT_SERVER_WORKERS_WORKER_TOOL_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "finetune/v1/worker.pb.h"
#include "server/workers/tool_runner.h"

namespace ft::server {

struct WorkerToolOptions {
  // The finetune-worker binary.
  std::string binary;
  // --threads for the tool.
  int threads = 1;
};

// Runs `finetune-worker --tool=NAME` with a binary ToolRequest on its stdin
// and reads the binary ToolReply from its stdout. The server links neither
// LibTorch nor OpenCV, so the requests that need them (ValidateJob, Predict)
// run this way, in a child process. The reply's code and message become the
// returned status. DEADLINE_EXCEEDED after `timeout` (the process is killed);
// INTERNAL with its stderr when the tool dies without a reply. Thread-safe;
// the caller bounds how many run at once.
class WorkerTool final : public ToolRunner {
 public:
  explicit WorkerTool(const WorkerToolOptions& options) : options_(options) {}
  absl::StatusOr<finetune::v1::ToolReply> Run(const finetune::v1::ToolRequest& request,
                                              absl::Duration timeout) override;

 private:
  WorkerToolOptions options_;
};

}  // namespace ft::server

#endif  // FT_SERVER_WORKERS_WORKER_TOOL_H_
