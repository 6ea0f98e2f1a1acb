#ifndef FT_WORKER_AGENT_DEVICE_MEMORY_H_
#define FT_WORKER_AGENT_DEVICE_MEMORY_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace ft::worker {

struct DeviceMemoryOptions {
  // The worker's device as torch::Device::str() writes it: "cpu", "cuda"
  // (the current device, cuda:0 in the worker) or "cuda:N".
  std::string device = "cpu";
  // What dlopen() loads: the driver's NVML soname, or a path (tests load a fake).
  std::string nvml_library = "libnvidia-ml.so.1";
  // CUDA_VISIBLE_DEVICES as this process's CUDA runtime saw it; nullopt when
  // unset. CudaVisibleDevicesFromEnvironment() reads it.
  std::optional<std::string> cuda_visible_devices;
};

// The process's CUDA_VISIBLE_DEVICES, or nullopt when it is unset.
std::optional<std::string> CudaVisibleDevicesFromEnvironment();

struct DeviceMemoryUsage {
  uint64_t used_bytes = 0;
  uint64_t total_bytes = 0;
};

// Reads a GPU's memory through NVML, which is loaded at run time, so the
// worker needs no CUDA or NVML at build time and runs where there is none.
//
// "Used" is NVML's figure for the whole device: every process on the GPU,
// plus what the driver reserves; it is not this process's share (NVML's
// per-process figures use host pids, which a container does not see).
//
// cuda:N is CUDA's N-th visible device. It is mapped to NVML through
// CUDA_VISIBLE_DEVICES: a number there is an NVML index, a GPU-/MIG- UUID
// (or a GPU- UUID prefix) is looked up by UUID; unset, N is the NVML index.
// Numbers are only exact when CUDA and NVML order the GPUs alike: always with
// CUDA_DEVICE_ORDER=PCI_BUS_ID or with UUIDs, usually with identical GPUs.
//
// Thread-safe (NVML is). The NVML library stays loaded after destruction.
class DeviceMemory {
 public:
  // Loads NVML, finds the device and reads it once, so that every problem
  // shows here. Returns nullptr for "cpu" (nothing to read; NVML is not
  // loaded). Errors: InvalidArgument (a device string that is not cpu, cuda
  // or cuda:N), NotFound (cuda:N not visible, no such NVML device or UUID),
  // Unavailable (the library cannot be loaded), Unimplemented (the library
  // lacks a function), or NVML's own error with its code and text.
  static absl::StatusOr<std::unique_ptr<DeviceMemory>> Create(const DeviceMemoryOptions& options);
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  // Bytes in use and in all on the device now; an NVML error otherwise.
  absl::StatusOr<DeviceMemoryUsage> Read() const;

  // Which NVML device is read and why, for the log: "cuda:1 is NVML device 3
  // (CUDA_VISIBLE_DEVICES entry 1: 3)".
  const std::string& description() const { return description_; }

 private:
  struct Nvml;  // The loaded NVML functions; see device_memory.cc.

  DeviceMemory(std::unique_ptr<Nvml> nvml, void* device, std::string description);

  std::unique_ptr<Nvml> nvml_;
  void* device_;  // nvmlDevice_t
  std::string description_;
};

}  // namespace ft::worker

#endif  // FT_WORKER_AGENT_DEVICE_MEMORY_H_
