#include "worker/train/torch_process.h"

#include <dlfcn.h>
#include <link.h>
#include <malloc.h>
#include <stdlib.h>

#include <filesystem>
#include <string>
#include <vector>

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
  // LibTorch sets MKL's threads but not those of a libblas.so.3 it does not
  // know. BLIS runs one thread unless BLIS_NUM_THREADS says otherwise, read
  // when its first call initialises it (Debian's libblas.so.3 exports no
  // bli_thread_set_num_threads), so it is set here, before any BLAS call,
  // unless the user set it. OpenBLAS runs one thread per core whatever
  // --threads says; its setter is looked up, so that any BLAS, or none, links.
  ::setenv("BLIS_NUM_THREADS", std::to_string(threads).c_str(), /*overwrite=*/0);
  using SetThreads = void (*)(int);
  if (auto set = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(threads);
  torch::jit::setGraphExecutorOptimize(false);
}

void ReleaseCachedMemory(torch::Device device) {
#ifdef FT_EMPTY_CUDA_CACHE
  if (device.is_cuda() && torch::cuda::is_available()) c10::cuda::CUDACachingAllocator::emptyCache();
#else
  (void)device;
#endif
  // The heap pages the allocator keeps: tcmalloc's (the worker links it;
  // looked up, so that a binary on glibc's malloc links too), or glibc's.
  using Release = void (*)();
  if (auto release = reinterpret_cast<Release>(::dlsym(RTLD_DEFAULT, "MallocExtension_ReleaseFreeMemory"))) {
    release();
  }
  ::malloc_trim(0);
}

namespace {

int CollectObject(struct dl_phdr_info* info, size_t, void* out) {
  if (info->dlpi_name != nullptr && info->dlpi_name[0] != '\0') {
    static_cast<std::vector<std::string>*>(out)->push_back(info->dlpi_name);
  }
  return 0;
}

bool Contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

}  // namespace

std::string BlasInUse() {
  std::vector<std::string> objects;
  ::dl_iterate_phdr(&CollectObject, &objects);
  std::string blas;  // the libblas.so.3 loaded, after its links
  for (const auto& o : objects) {
    const std::string base = std::filesystem::path(o).filename().string();
    if (base.rfind("libblas.so", 0) == 0 || base.rfind("libopenblas", 0) == 0 || base.rfind("libblis", 0) == 0 ||
        base.rfind("libmkl_rt", 0) == 0) {
      std::error_code ec;
      const auto real = std::filesystem::canonical(o, ec);
      blas = ec ? o : real.string();
      if (base.rfind("libblas.so", 0) == 0) break;  // what LibTorch calls
    }
  }
  if (blas.empty()) {
    return at::hasMKL() ? "MKL (inside LibTorch)" : "none found (LibTorch links no shared BLAS)";
  }
  if (Contains(blas, "blis")) return "BLIS (" + blas + ")";
  if (Contains(blas, "openblas")) return "OpenBLAS (" + blas + ")";
  if (Contains(blas, "mkl")) return "MKL (" + blas + ")";
  if (Contains(blas, "/blas/") || Contains(blas, "libblas.so.3.")) {
    return "reference BLAS (" + blas + "; slow: install libblis4-pthread)";
  }
  return blas;
}

std::string AllocatorInUse() {
  std::vector<std::string> objects;
  ::dl_iterate_phdr(&CollectObject, &objects);
  for (const auto& o : objects) {
    const std::string base = std::filesystem::path(o).filename().string();
    if (base.rfind("libtcmalloc", 0) == 0) return "tcmalloc";
    if (base.rfind("libjemalloc", 0) == 0) return "jemalloc";
  }
  return "glibc malloc";
}

}  // namespace ft::worker
