#include "server/metrics/server_metrics.h"

#include <chrono>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/util/tenant.h"
#include "grpcpp/support/status_code_enum.h"

namespace ft::server {
namespace {

const prometheus::Histogram::BucketBoundaries& DurationBuckets() {
  static const auto* kBuckets = new prometheus::Histogram::BucketBoundaries{
      1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400};
  return *kBuckets;
}

const prometheus::Histogram::BucketBoundaries& RpcBuckets() {
  static const auto* kBuckets = new prometheus::Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
  return *kBuckets;
}

std::string CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                 "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
                                 "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : "UNKNOWN";
}

// Counts and times each RPC by method and final code.
class MetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(ServerMetrics* metrics, std::string method)
      : metrics_(metrics), method_(std::move(method)), start_(std::chrono::steady_clock::now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      metrics_->RecordRpc(method_, methods->GetSendStatus().error_code(), seconds);
    }
    methods->Proceed();
  }

 private:
  ServerMetrics* metrics_;
  std::string method_;
  std::chrono::steady_clock::time_point start_;
};

class MetricsInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(ServerMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    // Only the service's own methods: the label set stays bounded.
    std::string method = info->method() ? info->method() : "";
    if (method.rfind("/finetune.v1.", 0) != 0 && method.rfind("/grpc.health.v1.", 0) != 0) {
      method = "other";
    }
    return new MetricsInterceptor(metrics_, method);
  }

 private:
  ServerMetrics* metrics_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ServerMetrics>> ServerMetrics::Create(const ServerMetricsOptions& options) {
  std::unique_ptr<ServerMetrics> m(new ServerMetrics(options));
  try {
    m->exposer_ = std::make_unique<prometheus::Exposer>(options.listen);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", options.listen, ": ", e.what()));
  }
  m->exposer_->RegisterCollectable(m->registry_);
  return m;
}

ServerMetrics::ServerMetrics(const ServerMetricsOptions& options)
    : options_(options), registry_(std::make_shared<prometheus::Registry>()) {
  using prometheus::BuildCounter;
  using prometheus::BuildGauge;
  using prometheus::BuildHistogram;
  submitted_ = &BuildCounter().Name("finetune_jobs_submitted_total").Help("Jobs accepted by SubmitJob, by tenant.")
                    .Register(*registry_);
  finished_ = &BuildCounter().Name("finetune_jobs_finished_total")
                   .Help("Jobs that ended, by final state and tenant.")
                   .Register(*registry_);
  SeeTenant(util::kDefaultTenant);
  queue_depth_ = &BuildGauge().Name("finetune_queue_depth").Help("Jobs waiting in the queue.")
                      .Register(*registry_).Add({});
  queued_worker_demand_ = &BuildGauge()
                               .Name("finetune_queued_worker_demand")
                               .Help("Workers the queued jobs need, each job counting its JobSpec.workers "
                                     "(what an autoscaler should add).")
                               .Register(*registry_)
                               .Add({});
  queue_wait_ = &BuildHistogram().Name("finetune_queue_wait_seconds").Help("Time from submit to first lease.")
                     .Register(*registry_).Add({}, DurationBuckets());
  job_duration_ = &BuildHistogram().Name("finetune_job_duration_seconds").Help("Time from first start to end.")
                       .Register(*registry_).Add({}, DurationBuckets());
  auto& workers = BuildGauge().Name("finetune_workers").Help("Workers seen in the last 30 s, by state.")
                      .Register(*registry_);
  workers_idle_ = &workers.Add({{"state", "idle"}});
  workers_busy_ = &workers.Add({{"state", "busy"}});
  trained_images_ = &BuildCounter().Name("finetune_trained_images_total")
                         .Help("Training images processed by finished jobs (all epochs).")
                         .Register(*registry_).Add({});
  grpc_requests_ = &BuildCounter().Name("finetune_grpc_requests_total").Help("RPCs by method and code.")
                        .Register(*registry_);
  grpc_duration_ = &BuildHistogram().Name("finetune_grpc_request_duration_seconds")
                        .Help("RPC latency by method (streams: their whole life).").Register(*registry_);
  lease_expirations_ = &BuildCounter().Name("finetune_lease_expirations_total")
                            .Help("Leases that expired because a worker stopped answering.")
                            .Register(*registry_).Add({});
  model_store_bytes_ = &BuildGauge().Name("finetune_model_store_bytes").Help("Bytes in the model store.")
                            .Register(*registry_).Add({});
  worker_restarts_ = &BuildCounter().Name("finetune_worker_restarts_total")
                          .Help("Local worker processes restarted after dying.").Register(*registry_).Add({});
  auth_failures_ = &BuildCounter().Name("finetune_auth_failures_total")
                        .Help("Calls refused by authentication or authorization, by reason.")
                        .Register(*registry_);
  // The reasons of server/auth/authenticator.h, present from the start.
  for (const char* r : {"missing_token", "malformed", "unknown_token", "permission_denied"}) {
    auth_failures_->Add({{"reason", r}});
  }
}

ServerMetrics::~ServerMetrics() { Stop(); }

void ServerMetrics::Start() {
  refresher_ = std::thread([this] {
    while (true) {
      Refresh();
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), options_.refresh_interval)) return;
    }
  });
}

void ServerMetrics::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (refresher_.joinable()) refresher_.join();
}

void ServerMetrics::SetWorkerPool(LocalWorkerPool* pool) {
  absl::MutexLock lock(&mu_);
  pool_ = pool;
}

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
ServerMetrics::InterceptorCreators() {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> out;
  out.push_back(std::make_unique<MetricsInterceptorFactory>(this));
  return out;
}

void ServerMetrics::SeeTenant(const std::string& tenant) {
  // Every state of a tenant exists from its first submit (the default
  // tenant's from the start), so rate() sees its first failure. Add() of an
  // existing label set returns it; prometheus-cpp locks the family.
  submitted_->Add({{"tenant", tenant}});
  for (const char* s : {"SUCCEEDED", "FAILED", "CANCELLED"}) finished_->Add({{"state", s}, {"tenant", tenant}});
}

void ServerMetrics::OnSubmitted(const std::string& tenant) {
  SeeTenant(tenant);
  submitted_->Add({{"tenant", tenant}}).Increment();
}

void ServerMetrics::OnLeased(absl::Duration queue_wait) {
  queue_wait_->Observe(absl::ToDoubleSeconds(queue_wait));
}

void ServerMetrics::OnFinished(pb::JobState state, absl::Duration duration, int64_t trained_images,
                               const std::string& tenant) {
  SeeTenant(tenant);
  finished_->Add({{"state", pb::JobState_Name(state)}, {"tenant", tenant}}).Increment();
  job_duration_->Observe(absl::ToDoubleSeconds(duration));
  if (trained_images > 0) trained_images_->Increment(static_cast<double>(trained_images));
}

void ServerMetrics::OnLeaseExpired() { lease_expirations_->Increment(); }

void ServerMetrics::RecordRpc(const std::string& method, grpc::StatusCode code, double seconds) {
  grpc_requests_->Add({{"method", method}, {"code", CodeName(code)}}).Increment();
  grpc_duration_->Add({{"method", method}}, RpcBuckets()).Observe(seconds);
}

void ServerMetrics::RecordAuthFailure(absl::string_view reason) {
  auth_failures_->Add({{"reason", std::string(reason)}}).Increment();
}

void ServerMetrics::Refresh() {
  JobManager* m = options_.manager;
  if (auto queued = m->store()->CountInState(pb::QUEUED); queued.ok()) queue_depth_->Set(*queued);
  if (auto demand = m->store()->QueuedWorkerDemand(); demand.ok()) {
    queued_worker_demand_->Set(static_cast<double>(*demand));
  }
  const JobManager::WorkerCounts w = m->Workers();
  workers_idle_->Set(w.idle);
  workers_busy_->Set(w.busy);
  model_store_bytes_->Set(static_cast<double>(m->models()->TotalBytes()));
  absl::MutexLock lock(&mu_);
  if (pool_ != nullptr) {
    const int restarts = pool_->Restarts();
    if (restarts > restarts_seen_) worker_restarts_->Increment(restarts - restarts_seen_);
    restarts_seen_ = restarts;
  }
}

}  // namespace ft::server
