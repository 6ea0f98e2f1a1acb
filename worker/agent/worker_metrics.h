#ifndef FT_WORKER_AGENT_WORKER_METRICS_H_
#define FT_WORKER_AGENT_WORKER_METRICS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace ft::worker {

// A worker's Prometheus metrics, served on its own --metrics-listen. No job
// ids in labels. Thread-safe (prometheus-cpp metrics are).
class WorkerMetrics {
 public:
  static absl::StatusOr<std::unique_ptr<WorkerMetrics>> Create(const std::string& listen);

  // One optimiser step of `images` images that took `seconds`.
  void OnStep(double seconds, int64_t images);
  // Seconds the trainer waited for the loader (data starvation).
  void OnLoaderWait(double seconds);
  // GPU memory in use and in all, in bytes, as NVML reports it for the whole
  // device (see DeviceMemory); left at 0 on CPU and without NVML.
  void SetDeviceMemory(double bytes);
  void SetDeviceMemoryTotal(double bytes);

 private:
  WorkerMetrics();
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Histogram* step_seconds_;
  prometheus::Counter* loader_wait_;
  prometheus::Counter* images_;
  prometheus::Gauge* device_memory_;
  prometheus::Gauge* device_memory_total_;
};

}  // namespace ft::worker

#endif  // FT_WORKER_AGENT_WORKER_METRICS_H_
