#ifndef FT_SERVER_METRICS_SERVER_METRICS_H_
#define FT_SERVER_METRICS_SERVER_METRICS_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/server_interceptor.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/jobs/job_manager.h"
#include "server/workers/local_worker_pool.h"

namespace ft::server {

struct ServerMetricsOptions {
  // host:port of the Prometheus text endpoint (/metrics).
  std::string listen;
  // Not owned; must outlive the metrics.
  JobManager* manager = nullptr;
  // How often gauges (queue depth, workers, store bytes) are refreshed.
  absl::Duration refresh_interval = absl::Seconds(2);
};

// The server's Prometheus metrics. Label sets are bounded: no job ids, only
// states, tenants (those of --auth-file), gRPC methods and codes. Thread-safe; owns its refresher thread
// (Stop() joins it).
class ServerMetrics final : public JobObserver {
 public:
  static absl::StatusOr<std::unique_ptr<ServerMetrics>> Create(const ServerMetricsOptions& options);
  ~ServerMetrics() override;

  void Start();
  void Stop();
  // Not owned; may be null. Its restarts become finetune_worker_restarts_total.
  void SetWorkerPool(LocalWorkerPool* pool);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
  InterceptorCreators();

  // JobObserver
  void OnSubmitted(const std::string& tenant) override;
  void OnLeased(absl::Duration queue_wait) override;
  void OnFinished(pb::JobState state, absl::Duration duration, int64_t trained_images,
                  const std::string& tenant) override;
  void OnLeaseExpired() override;

  void RecordRpc(const std::string& method, grpc::StatusCode code, double seconds);
  // One refused call; `reason` is one of server/auth's AuthFailureName()s.
  void RecordAuthFailure(absl::string_view reason);

 private:
  explicit ServerMetrics(const ServerMetricsOptions& options);
  void Refresh();

  ServerMetricsOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  // Creates the tenant's series at 0 the first time it is seen.
  void SeeTenant(const std::string& tenant);
  prometheus::Family<prometheus::Counter>* submitted_;
  prometheus::Family<prometheus::Counter>* finished_;
  prometheus::Gauge* queue_depth_;
  prometheus::Gauge* queued_worker_demand_;
  prometheus::Histogram* queue_wait_;
  prometheus::Histogram* job_duration_;
  prometheus::Gauge* workers_idle_;
  prometheus::Gauge* workers_busy_;
  prometheus::Counter* trained_images_;
  prometheus::Family<prometheus::Counter>* grpc_requests_;
  prometheus::Family<prometheus::Histogram>* grpc_duration_;
  prometheus::Counter* lease_expirations_;
  prometheus::Gauge* model_store_bytes_;
  prometheus::Counter* worker_restarts_;
  prometheus::Family<prometheus::Counter>* auth_failures_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  LocalWorkerPool* pool_ ABSL_GUARDED_BY(mu_) = nullptr;
  int restarts_seen_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread refresher_;
};

}  // namespace ft::server

#endif  // FT_SERVER_METRICS_SERVER_METRICS_H_
