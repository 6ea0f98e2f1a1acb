// Internal helper of ft::weights: copying little-endian tensor bytes from a
// file into an owned tensor.
#ifndef FT_WORKER_WEIGHTS_TENSOR_BYTES_H_
#define FT_WORKER_WEIGHTS_TENSOR_BYTES_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "worker/weights/checks.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "weight readers assume a little-endian host, as the file formats are");

namespace ft::worker::weights_internal {

// Copies `bytes` (exactly numel(sizes) elements of `dtype`, little-endian)
// into a new contiguous CPU tensor. Bool tensors must hold only 0 and 1.
// `what` names the tensor in errors.
inline absl::StatusOr<at::Tensor> TensorFromBytes(absl::string_view bytes, at::ScalarType dtype,
                                                  const std::vector<int64_t>& sizes,
                                                  const std::string& what) {
  int64_t numel = 0;
  uint64_t nbytes = 0;
  if (sizes.size() > kMaxDims || !CheckedNumel(sizes, &numel) ||
      !CheckedBytes(numel, c10::elementSize(dtype), &nbytes)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": invalid shape"));
  }
  if (nbytes != bytes.size()) {
    return absl::DataLossError(absl::StrCat(what, ": shape needs ", nbytes, " bytes, have ",
                                            bytes.size()));
  }
  if (dtype == at::kBool) {
    for (char c : bytes) {
      if (c != 0 && c != 1) {
        return absl::DataLossError(absl::StrCat(what, ": bool tensor holds a byte other than 0/1"));
      }
    }
  }
  at::Tensor t = at::empty(sizes, at::TensorOptions().dtype(dtype));
  if (nbytes > 0) std::memcpy(t.data_ptr(), bytes.data(), nbytes);
  return t;
}

}  // namespace ft::worker::weights_internal

#endif  // FT_WORKER_WEIGHTS_TENSOR_BYTES_H_
