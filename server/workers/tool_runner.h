#ifndef FT_SERVER_WORKERS_TOOL_RUNNER_H_
#define FT_SERVER_WORKERS_TOOL_RUNNER_H_

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "finetune/v1/worker.pb.h"

namespace ft::server {

// Runs one request that needs LibTorch or OpenCV (ValidateJob's dry run,
// Predict) outside the server process. The reply's status is the returned
// status. Implementations are thread-safe; callers bound how many run at
// once (the tool queue). Tests substitute doubles.
class ToolRunner {
 public:
  virtual ~ToolRunner() = default;
  virtual absl::StatusOr<finetune::v1::ToolReply> Run(const finetune::v1::ToolRequest& request,
                                                      absl::Duration timeout) = 0;
};

}  // namespace ft::server

#endif  // FT_SERVER_WORKERS_TOOL_RUNNER_H_
