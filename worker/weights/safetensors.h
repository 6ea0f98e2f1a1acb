// Reader for the safetensors format: an 8-byte little-endian header length,
// a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}},
// then the tensor bytes. Strict: the header is bounded, every tensor's bytes
// must match its shape, and the tensors must tile the data area exactly.
#ifndef FT_WORKER_WEIGHTS_SAFETENSORS_H_
#define FT_WORKER_WEIGHTS_SAFETENSORS_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/weights/named_tensor.h"

namespace ft::worker {

// Reads the tensors of the safetensors file at `path`, ordered by their
// position in the file. Supported dtypes: F64, F32, F16, BF16, I64, I32, I16,
// I8, U8, BOOL. NOT_FOUND when missing, DATA_LOSS when truncated or corrupt,
// INVALID_ARGUMENT for unsupported content. Never throws. When `metadata` is
// given, it receives the header's __metadata__ (string to string).
absl::StatusOr<std::vector<NamedTensor>> ReadSafetensors(const std::string& path,
                                                         std::map<std::string, std::string>* metadata = nullptr);

// As ReadSafetensors, on the file's bytes; `what_for_errors` starts messages.
absl::StatusOr<std::vector<NamedTensor>> ParseSafetensors(absl::string_view bytes,
                                                          const std::string& what_for_errors,
                                                          std::map<std::string, std::string>* metadata = nullptr);

}  // namespace ft::worker

#endif  // FT_WORKER_WEIGHTS_SAFETENSORS_H_
