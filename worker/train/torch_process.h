// LibTorch's process-wide settings, made once when a worker process starts
// rather than by each job or tool, and what a finished job leaves cached.
#ifndef FT_WORKER_TRAIN_TORCH_PROCESS_H_
#define FT_WORKER_TRAIN_TORCH_PROCESS_H_

#include <string>

#include <torch/types.h>

namespace ft::worker {

// Sets LibTorch's intra-op threads to `threads` (OpenMP would otherwise
// start with one here) and turns the graph executor's optimisation off:
// the profiling executor re-specialises and re-optimises the models' graphs
// during the first epoch (10x slower steps, measured) and again when stages
// unfreeze, while plain interpretation runs the same ATen kernels. Call
// once, from main(), before any job or tool runs; not thread-safe.
void InitTorchProcess(int threads);

// Gives back the memory a finished job's tensors left cached, once they are
// destroyed: on a CUDA `device`, LibTorch's caching allocator's blocks
// (emptyCache, in builds linked with libc10_cuda), and the heap pages that
// glibc keeps. Call between jobs, with no tensor of the job left.
void ReleaseCachedMemory(torch::Device device);

// The BLAS this process's LibTorch computes with, for --version and the
// job's first log line, so that a slow machine explains itself: "BLIS
// (/usr/lib/x86_64-linux-gnu/blis-pthread/libblas.so.3)", "OpenBLAS (...)",
// "reference BLAS (...; slow: install libblis4-pthread)", or "MKL (inside
// LibTorch)" for builds that carry their own. Read from the shared objects
// loaded now (dl_iterate_phdr), following links to the file.
std::string BlasInUse();

// The malloc this process runs on: "tcmalloc" (finetune-worker links
// libtcmalloc_minimal: bench/README.md "Allocator"), "jemalloc" where one is
// preloaded, else "glibc malloc".
std::string AllocatorInUse();

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_TORCH_PROCESS_H_
