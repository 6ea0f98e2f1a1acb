// Reader for PyTorch checkpoints written by torch.save(model.state_dict(), f)
// in the zip format (the default since torch 1.6) or the legacy format before
// it (_use_new_zipfile_serialization=False; torchvision's older files).
// LibTorch's pickle_load cannot read them, so the zip records, the pickles
// and the storages are parsed here, by a strict reader meant for untrusted
// files: every offset is checked against the file, only a fixed set of
// pickle globals is allowed (no code runs), and every count is bounded.
#ifndef FT_WORKER_WEIGHTS_TORCH_CHECKPOINT_H_
#define FT_WORKER_WEIGHTS_TORCH_CHECKPOINT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/weights/named_tensor.h"

namespace ft::worker {

// Reads the state_dict saved at `path`: its tensors in file order. The
// format is told by the content (a zip, or a pickle).
// NOT_FOUND when the file is missing; DATA_LOSS when it is truncated or
// corrupt; INVALID_ARGUMENT when it holds something other than a state_dict
// of tensors (another pickle global, compressed records, storage views, the
// pre-pickle tar format). Never throws.
absl::StatusOr<std::vector<NamedTensor>> ReadTorchCheckpoint(const std::string& path);

// As ReadTorchCheckpoint, on the file's bytes; `what_for_errors` (the path)
// starts every error message.
absl::StatusOr<std::vector<NamedTensor>> ParseTorchCheckpoint(absl::string_view bytes,
                                                              const std::string& what_for_errors);

}  // namespace ft::worker

#endif  // FT_WORKER_WEIGHTS_TORCH_CHECKPOINT_H_
