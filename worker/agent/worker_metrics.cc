#include "worker/agent/worker_metrics.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ft::worker {

absl::StatusOr<std::unique_ptr<WorkerMetrics>> WorkerMetrics::Create(const std::string& listen) {
  std::unique_ptr<WorkerMetrics> m(new WorkerMetrics());
  try {
    m->exposer_ = std::make_unique<prometheus::Exposer>(listen);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", listen, ": ", e.what()));
  }
  m->exposer_->RegisterCollectable(m->registry_);
  return m;
}

WorkerMetrics::WorkerMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  step_seconds_ = &prometheus::BuildHistogram()
                       .Name("finetune_worker_step_seconds")
                       .Help("Wall time of one training step (forward, backward, optimiser).")
                       .Register(*registry_)
                       .Add({}, prometheus::Histogram::BucketBoundaries{0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                                        0.5, 1, 2.5, 5, 10, 30});
  loader_wait_ = &prometheus::BuildCounter()
                      .Name("finetune_worker_loader_wait_seconds_total")
                      .Help("Seconds the trainer waited for batches (data starvation).")
                      .Register(*registry_)
                      .Add({});
  images_ = &prometheus::BuildCounter()
                 .Name("finetune_worker_images_total")
                 .Help("Training images processed.")
                 .Register(*registry_)
                 .Add({});
  device_memory_ = &prometheus::BuildGauge()
                        .Name("finetune_worker_device_memory_bytes")
                        .Help("GPU memory in use on the worker's device, all processes, as NVML reports it "
                              "(0 on CPU or without NVML).")
                        .Register(*registry_)
                        .Add({});
  device_memory_total_ = &prometheus::BuildGauge()
                              .Name("finetune_worker_device_memory_total_bytes")
                              .Help("GPU memory in all on the worker's device, as NVML reports it "
                                    "(0 on CPU or without NVML).")
                              .Register(*registry_)
                              .Add({});
}

void WorkerMetrics::OnStep(double seconds, int64_t images) {
  step_seconds_->Observe(seconds);
  images_->Increment(static_cast<double>(images));
}

void WorkerMetrics::OnLoaderWait(double seconds) {
  if (seconds > 0) loader_wait_->Increment(seconds);
}

void WorkerMetrics::SetDeviceMemory(double bytes) { device_memory_->Set(bytes); }

void WorkerMetrics::SetDeviceMemoryTotal(double bytes) { device_memory_total_->Set(bytes); }

}  // namespace ft::worker
