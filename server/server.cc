#include "server/server.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/util/executor.h"
#include "common/util/files.h"
#include "common/util/log.h"
#include "common/util/random_token.h"
#include "common/util/sha256.h"
#include "common/util/status.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/api/finetune_service.h"
#include "server/api/worker_gateway_service.h"
#include "server/auth/audit_log.h"
#include "server/auth/authenticator.h"
#include "server/auth/call_guard.h"
#include "server/auth/tls.h"
#include "server/datasets/dataset_store.h"
#include "server/events/event_hub.h"
#include "server/jobs/job_manager.h"
#include "server/jobs/postgres_job_store.h"
#include "server/jobs/sqlite_job_store.h"
#include "server/metrics/server_metrics.h"
#include "server/models/model_store.h"
#include "server/workers/local_worker_pool.h"
#include "server/workers/worker_tool.h"

namespace ft::server {
namespace fs = std::filesystem;

// The health service names: readiness ("" and the API's name) is SERVING
// only between start and the first moment of a drain; liveness stays
// SERVING for as long as the process can answer.
constexpr char kLivenessService[] = "liveness";
constexpr char kApiService[] = "finetune.v1.FineTune";

// Declared in the order they are built; destroyed in reverse.
struct Server::Parts {
  ServerOptions options;
  util::RealClock real_clock;
  util::Clock* clock = nullptr;
  std::unique_ptr<JobStore> store;
  std::unique_ptr<FilesystemModelStore> models;
  std::unique_ptr<datasets::DatasetStore> datasets;
  std::unique_ptr<CheckpointStore> checkpoints;
  EventHub hub;
  std::unique_ptr<JobManager> manager;
  std::unique_ptr<ServerMetrics> metrics;
  std::unique_ptr<auth::Authenticator> authenticator;
  std::unique_ptr<auth::AuditLog> audit;
  std::unique_ptr<auth::CallGuard> guard;
  std::unique_ptr<WorkerTool> worker_tool;
  ToolRunner* tools = nullptr;
  std::unique_ptr<util::Executor> slow, tool_queue, watch;
  std::unique_ptr<EventLogCache> events;
  std::unique_ptr<FineTuneService> api;
  std::unique_ptr<WorkerGatewayService> gateway;
  std::unique_ptr<grpc::Server> grpc;
  int port = 0;
  std::unique_ptr<LocalWorkerPool> pool;
};

namespace {

absl::Status Precondition(const std::string& what) { return absl::FailedPreconditionError(what); }

std::unique_ptr<util::Executor> MakeExecutor(const std::string& name, int threads, int max_queued) {
  util::ExecutorOptions o;
  o.name = name;
  o.threads = threads;
  o.max_queued = max_queued;
  return std::make_unique<util::Executor>(o);
}

// Whether only this machine can reach `listen`: 127.x, localhost, [::1] or
// a unix socket.
bool IsLoopback(const std::string& listen) {
  if (absl::StartsWith(listen, "unix:")) return true;
  std::string host = listen.substr(0, listen.rfind(':'));
  if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]")) host = host.substr(1, host.size() - 2);
  return absl::StartsWith(host, "127.") || host == "localhost" || host == "::1";
}

// SQLite in the data dir, or the PostgreSQL database `o.database` names.
absl::StatusOr<std::unique_ptr<JobStore>> OpenJobStore(const ServerOptions& o, util::Clock* clock) {
  if (o.database.empty()) {
    FT_ASSIGN_OR_RETURN(std::unique_ptr<JobStore> store, SqliteJobStore::Create({o.data_dir + "/finetuned.db", clock}));
    return store;
  }
  if (!IsPostgresUrl(o.database)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--database must be a postgresql:// or postgres:// URL (or empty, for SQLite in --data-dir), got '",
        RedactDatabaseUrl(o.database), "'"));
  }
  PostgresJobStoreOptions po;
  po.url = o.database;
  po.clock = clock;
  FT_ASSIGN_OR_RETURN(std::unique_ptr<JobStore> store, PostgresJobStore::Create(po));
  return store;
}

// The replica id `o` asks for, or its default (ServerOptions::replica_id).
absl::StatusOr<std::string> ReplicaId(const ServerOptions& o) {
  std::string id = o.replica_id;
  if (id.empty() && !o.database.empty()) {
    char host[256] = {};
    if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') std::snprintf(host, sizeof(host), "replica");
    // Only the characters an id may hold; a dotted host name keeps its first label.
    std::string label(host, std::strcspn(host, "."));
    for (char& c : label) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '-';
    }
    id = absl::StrCat(label.substr(0, 48), "-", ::getpid());
  }
  const bool valid = id.size() <= 64 && id != "." && id != ".." &&
                     std::all_of(id.begin(), id.end(), [](char c) {
                       return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
                     });
  if (!valid) {
    return absl::InvalidArgumentError(
        absl::StrCat("--replica-id must be 1 to 64 of A-Z a-z 0-9 . _ - (and not . or ..), got '", id, "'"));
  }
  return id;
}

absl::Status CheckExposure(const ServerOptions& o) {
  if (o.insecure || IsLoopback(o.listen)) return absl::OkStatus();
  if (o.auth_file.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "refusing to serve ", o.listen, " without --auth-file: anyone who can reach it could submit, read and "
        "delete every job and model (TLS alone authenticates no one). Give --auth-file FILE (and --tls-cert/"
        "--tls-key), or pass --insecure to serve it anyway"));
  }
  if (o.tls_cert.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "refusing to serve ", o.listen, " with --auth-file but without TLS: tokens would cross the network in "
        "the clear. Give --tls-cert and --tls-key, or pass --insecure to serve it anyway"));
  }
  return absl::OkStatus();
}

// The local workers' own credential, through their environment: a token
// minted for this run (an in-memory identity with role worker) and, with
// TLS, the server's certificate as their CA and the name to expect on it.
absl::Status LocalWorkerCredentials(const ServerOptions& o, auth::AuthenticatorOptions* auth,
                                    std::vector<std::string>* env) {
  if (!o.auth_file.empty() && o.local_workers > 0) {
    FT_ASSIGN_OR_RETURN(std::string token, util::NewRandomToken());
    auth::Identity worker;
    worker.name = "local-workers";
    worker.tenant = "default";
    worker.role = auth::Role::kWorker;
    worker.token_sha256 = util::Sha256Hex(token);
    auth->builtin.push_back(worker);
    env->push_back(absl::StrCat("FINETUNE_TOKEN=", token));
  }
  if (!o.tls_cert.empty()) {
    env->push_back(absl::StrCat("FINETUNE_TLS_CA=", fs::absolute(o.tls_cert).string()));
    FT_ASSIGN_OR_RETURN(std::string name, auth::LoopbackServerName(o.tls_cert));
    if (!name.empty()) env->push_back(absl::StrCat("FINETUNE_TLS_SERVER_NAME=", name));
    if (!o.tls_client_ca.empty()) {
      // The server's own pair as the workers' client certificate: sign it
      // with the client CA too (docs/operations.md).
      env->push_back(absl::StrCat("FINETUNE_TLS_CERT=", fs::absolute(o.tls_cert).string()));
      env->push_back(absl::StrCat("FINETUNE_TLS_KEY=", fs::absolute(o.tls_key).string()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const ServerOptions& in) {
  auto p = std::make_unique<Parts>();
  p->options = in;
  ServerOptions& o = p->options;
  p->clock = o.clock != nullptr ? o.clock : &p->real_clock;
  // Before anything is created: a refused exposure leaves no trace.
  FT_RETURN_IF_ERROR(CheckExposure(o));
  o.data_dir = fs::absolute(o.data_dir).lexically_normal().string();
  FT_RETURN_IF_ERROR(util::MakeDirs(o.data_dir));
  if (o.dataset_roots.empty()) {
    o.dataset_roots = {o.data_dir + "/datasets", "/usr/share/datasets"};
  } else {
    for (auto& r : o.dataset_roots) r = fs::absolute(r).lexically_normal().string();
  }
  o.weights_dir = o.weights_dir.empty() ? o.data_dir + "/weights" : fs::absolute(o.weights_dir).string();
  if (o.worker_binary.empty()) o.worker_binary = util::ExecutableDir() + "/finetune-worker";
  if (o.local_workers > 0 && !fs::exists(o.worker_binary)) {
    return Precondition(absl::StrCat("worker binary ", o.worker_binary,
                                     " not found (set --worker-binary, or --local-workers=0)"));
  }

  FT_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                      auth::MakeServerCredentials({o.tls_cert, o.tls_key, o.tls_client_ca}));
  auth::AuthenticatorOptions ao;
  ao.auth_file = o.auth_file;
  std::vector<std::string> worker_env;
  FT_RETURN_IF_ERROR(LocalWorkerCredentials(o, &ao, &worker_env));
  FT_ASSIGN_OR_RETURN(p->authenticator, auth::Authenticator::Create(ao));
  if (!o.audit_log.empty()) {
    FT_ASSIGN_OR_RETURN(p->audit, auth::AuditLog::Open(o.audit_log));
  }

  FT_ASSIGN_OR_RETURN(o.replica_id, ReplicaId(o));
  FT_ASSIGN_OR_RETURN(p->store, OpenJobStore(o, p->clock));
  FilesystemModelStoreOptions mso;
  mso.root = o.data_dir + "/models";
  mso.clock = p->clock;
  mso.replica_id = o.replica_id;
  FT_ASSIGN_OR_RETURN(p->models, FilesystemModelStore::Create(mso));
  datasets::DatasetStoreOptions dso;
  dso.replica_id = o.replica_id;
  dso.root = o.data_dir + "/datasets-uploaded";
  dso.cache_root = o.data_dir + "/datasets-cache";
  dso.max_upload_bytes = o.max_dataset_bytes;
  dso.extract.max_bytes = o.max_dataset_extracted_bytes;
  dso.extract.max_entries = o.max_dataset_entries;
  dso.clock = p->clock;
  FT_ASSIGN_OR_RETURN(p->datasets, datasets::DatasetStore::Create(dso));
  CheckpointStoreOptions cso;
  cso.root = o.data_dir + "/checkpoints";
  cso.replica_id = o.replica_id;
  FT_ASSIGN_OR_RETURN(p->checkpoints, CheckpointStore::Create(cso));

  JobManagerOptions jm;
  jm.dataset_roots = o.dataset_roots;
  jm.weights_dir = o.weights_dir;
  jm.lease_ttl = o.lease_ttl;
  jm.max_attempts = o.max_attempts;
  jm.dataset_store = p->datasets.get();
  jm.checkpoints = p->checkpoints.get();
  jm.clock = p->clock;
  p->manager = std::make_unique<JobManager>(jm, p->store.get(), &p->hub, p->models.get());

  if (!o.metrics_listen.empty()) {
    ServerMetricsOptions mo;
    mo.listen = o.metrics_listen;
    mo.manager = p->manager.get();
    FT_ASSIGN_OR_RETURN(p->metrics, ServerMetrics::Create(mo));
    p->manager->SetObserver(p->metrics.get());
  }

  auth::CallGuardOptions go;
  go.authenticator = p->authenticator.get();
  go.audit = p->audit.get();
  if (p->metrics) go.on_failure = [m = p->metrics.get()](absl::string_view reason) { m->RecordAuthFailure(reason); };
  p->guard = std::make_unique<auth::CallGuard>(go);

  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (o.tool_runner != nullptr) {
    p->tools = o.tool_runner;
  } else {
    p->worker_tool = std::make_unique<WorkerTool>(
        WorkerToolOptions{o.worker_binary, o.worker_threads > 0 ? o.worker_threads : cores});
    p->tools = p->worker_tool.get();
  }
  p->slow = MakeExecutor("ft-slow", o.slow_threads, /*max_queued=*/-1);
  p->tool_queue = MakeExecutor("ft-tools", o.max_tool_processes, o.max_queued_tools);
  p->watch = MakeExecutor("ft-watch", o.watch_threads, /*max_queued=*/-1);

  FineTuneServiceOptions so;
  so.manager = p->manager.get();
  so.tools = p->tools;
  so.slow = p->slow.get();
  so.tool_queue = p->tool_queue.get();
  so.watch = p->watch.get();
  p->events = std::make_unique<EventLogCache>(p->store.get());
  so.events = p->events.get();
  so.guard = p->guard.get();
  p->api = std::make_unique<FineTuneService>(so);
  p->gateway = std::make_unique<WorkerGatewayService>(p->manager.get(), p->guard.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(o.listen, credentials, &p->port);
  builder.RegisterService(p->api.get());
  builder.RegisterService(p->gateway.get());
  // The guard first: its decision must exist before any handler runs.
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(p->guard->InterceptorFactory());
  if (p->metrics) {
    for (auto& m : p->metrics->InterceptorCreators()) interceptors.push_back(std::move(m));
  }
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  p->grpc = builder.BuildAndStart();
  if (!p->grpc || p->port == 0) return Precondition(absl::StrCat("cannot listen on ", o.listen));
  grpc::HealthCheckServiceInterface* health = p->grpc->GetHealthCheckService();
  // Not ready until the workers and the sweeper run; alive from now on.
  health->SetServingStatus("", false);
  health->SetServingStatus(kApiService, false);
  health->SetServingStatus(kLivenessService, true);

  p->manager->Start();
  if (p->metrics) p->metrics->Start();

  LocalWorkerPoolOptions pool;
  pool.count = o.local_workers;
  pool.worker_binary = o.worker_binary;
  pool.server_address = absl::StrCat("127.0.0.1:", p->port);
  // Replicas sharing the data dir each have their own workers' dirs and ids.
  pool.work_root = o.replica_id.empty() ? o.data_dir + "/work" : absl::StrCat(o.data_dir, "/work/", o.replica_id);
  pool.worker_id_prefix = o.replica_id.empty() ? "" : absl::StrCat(o.replica_id, "-");
  pool.threads_per_worker =
      o.worker_threads > 0 ? o.worker_threads : (o.local_workers > 0 ? std::max(1, cores / o.local_workers) : 0);
  pool.extra_args = {absl::StrCat("--device=", o.worker_device)};
  if (!o.worker_c10d_host.empty()) pool.extra_args.push_back(absl::StrCat("--c10d-host=", o.worker_c10d_host));
  pool.env = std::move(worker_env);
  pool.clock = p->clock;
  p->pool = std::make_unique<LocalWorkerPool>(pool);
  p->pool->Start();
  if (p->metrics) p->metrics->SetWorkerPool(p->pool.get());

  health->SetServingStatus("", true);
  health->SetServingStatus(kApiService, true);
  util::Log("info", "finetuned", "serving",
            {{"port", absl::StrCat(p->port)},
             {"data_dir", o.data_dir},
             {"replica_id", o.replica_id},
             {"database", o.database.empty() ? "sqlite" : RedactDatabaseUrl(o.database)},
             {"tls", o.tls_cert.empty() ? "off" : (o.tls_client_ca.empty() ? "on" : "mutual")},
             {"auth", o.auth_file.empty() ? "off" : absl::StrCat(p->authenticator->file_identities(), " identities")}});
  return std::unique_ptr<Server>(new Server(std::move(p)));
}

Server::Server(std::unique_ptr<Parts> parts) : parts_(std::move(parts)) {}

Server::~Server() { Shutdown(absl::Now() + absl::Seconds(5)); }

int Server::port() const { return parts_->port; }

absl::Status Server::ReloadAuth() {
  FT_RETURN_IF_ERROR(parts_->authenticator->Reload());
  util::Log("info", "finetuned", "auth file reloaded",
            {{"identities", absl::StrCat(parts_->authenticator->file_identities())}});
  return absl::OkStatus();
}

std::string Server::local_address() const { return absl::StrCat("127.0.0.1:", parts_->port); }

void Server::Wait() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(&shut_down_));
}

void Server::StartDraining() {
  util::Log("info", "finetuned", "draining");
  grpc::HealthCheckServiceInterface* health = parts_->grpc->GetHealthCheckService();
  health->SetServingStatus("", false);
  health->SetServingStatus(kApiService, false);
}

void Server::Shutdown(absl::Time deadline) {
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
  }
  Parts& p = *parts_;
  StartDraining();
  if (p.metrics) p.metrics->SetWorkerPool(nullptr);
  p.pool->Stop();
  p.grpc->Shutdown(absl::ToChronoTime(deadline));
  // The executors finish what they hold: calls that were in flight.
  p.slow->Shutdown();
  p.tool_queue->Shutdown();
  p.watch->Shutdown();
  p.grpc->Wait();
  if (p.metrics) p.metrics->Stop();
  p.manager->Shutdown();
  util::Log("info", "finetuned", "stopped");
  absl::MutexLock lock(&mu_);
  shut_down_ = true;
}

}  // namespace ft::server
