// LibTorch's process-wide settings, made once when a worker process starts
// rather than by each job or tool.
#ifndef FT_WORKER_TRAIN_TORCH_PROCESS_H_
#define FT_WORKER_TRAIN_TORCH_PROCESS_H_

namespace ft::worker {

// Sets LibTorch's intra-op threads to `threads` (OpenMP would otherwise
// start with one here) and turns the graph executor's optimisation off:
// the profiling executor re-specialises and re-optimises the models' graphs
// during the first epoch (10x slower steps, measured) and again when stages
// unfreeze, while plain interpretation runs the same ATen kernels. Call
// once, from main(), before any job or tool runs; not thread-safe.
void InitTorchProcess(int threads);

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_TORCH_PROCESS_H_
