#ifndef FT_WORKER_AGENT_TOOLS_H_
#define FT_WORKER_AGENT_TOOLS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "finetune/v1/worker.pb.h"

namespace ft::worker {

namespace pb = ::finetune::v1;

// One-shot tools the server runs as `finetune-worker --tool=...` for the
// requests that need LibTorch or OpenCV (the server links neither). They
// expect InitTorchProcess() (worker/train/torch_process.h) to have run.

// ValidateJob's report for a resolved job, except the queue position:
// scans and decodes the data, builds the model at the freeze depth, and
// times a few training steps. INVALID_ARGUMENT for a string option of the
// spec that the server would have refused. Never throws.
absl::StatusOr<pb::ValidationReport> ValidateJobTool(const pb::ResolvedJob& job);

// Runs model.pt (with its metadata.json) from `model_dir` on image files.
absl::StatusOr<pb::PredictResponse> PredictTool(const std::string& model_dir,
                                                const std::vector<std::string>& images, int top_k);

}  // namespace ft::worker

#endif  // FT_WORKER_AGENT_TOOLS_H_
