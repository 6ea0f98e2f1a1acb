#include "worker/train/torch_process.h"

#include <malloc.h>

#include <torch/script.h>
#include <torch/torch.h>

// Debian's CPU-only LibTorch ships c10/cuda's headers but not libc10_cuda,
// so the header alone does not say that emptyCache() links: CMake defines
// FT_HAVE_C10_CUDA when it found the library (CUDA builds of LibTorch).
#if defined(FT_HAVE_C10_CUDA) && defined(__has_include)
#if __has_include(<c10/cuda/CUDACachingAllocator.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#define FT_EMPTY_CUDA_CACHE 1
#endif
#endif

namespace ft::worker {

void InitTorchProcess(int threads) {
  torch::set_num_threads(threads);
  torch::jit::setGraphExecutorOptimize(false);
}

void ReleaseCachedMemory(torch::Device device) {
#ifdef FT_EMPTY_CUDA_CACHE
  if (device.is_cuda() && torch::cuda::is_available()) c10::cuda::CUDACachingAllocator::emptyCache();
#else
  (void)device;
#endif
  ::malloc_trim(0);
}

}  // namespace ft::worker
