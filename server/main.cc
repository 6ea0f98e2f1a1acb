// finetuned: the server. Flags are read here and nowhere else.
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/grpcpp.h"
#include "common/util/files.h"
#include "common/util/log.h"
#include "common/util/flag_names.h"
#include "server/api/finetune_service.h"
#include "server/api/worker_gateway_service.h"
#include "server/datasets/dataset_store.h"
#include "server/events/event_hub.h"
#include "server/jobs/job_manager.h"
#include "server/jobs/sqlite_job_store.h"
#include "server/metrics/server_metrics.h"
#include "server/models/model_store.h"
#include "server/workers/local_worker_pool.h"
#include "server/workers/worker_tool.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "gRPC address; port 0 picks a free port");
ABSL_FLAG(std::string, port_file, "", "write the bound port here once serving");
ABSL_FLAG(std::string, data_dir, "./var", "database, models, checkpoints, uploads");
ABSL_FLAG(int, local_workers, 1, "local finetune-worker processes; 0 means external workers only");
ABSL_FLAG(std::string, dataset_roots, "",
          "comma-separated directories file:// datasets may be read from "
          "(default: <data-dir>/datasets and /usr/share/datasets)");
ABSL_FLAG(std::string, weights_dir, "", "where `pretrained` weights are looked up (default <data-dir>/weights)");
ABSL_FLAG(std::string, metrics_listen, "", "Prometheus endpoint host:port (GET /metrics); empty disables it");
ABSL_FLAG(int, worker_threads, 0, "--threads for each local worker (default: cores / local workers)");
ABSL_FLAG(std::string, worker_binary, "", "finetune-worker to spawn (default: next to finetuned)");
ABSL_FLAG(std::string, worker_device, "auto", "--device for local workers");
ABSL_FLAG(std::string, log_format, "text", "log lines on stderr: text or json");
ABSL_FLAG(int, lease_ttl_seconds, 30, "a job's lease expires this long after its worker's last heartbeat");
ABSL_FLAG(int, max_attempts, 3, "a job fails after its worker is lost this many times");
ABSL_FLAG(int64_t, max_dataset_bytes, int64_t{10} << 30, "largest dataset archive UploadDataset accepts");
ABSL_FLAG(int64_t, max_dataset_extracted_bytes, int64_t{64} << 30,
          "largest total a dataset archive may extract to (uploads and file:// archives)");
ABSL_FLAG(int64_t, max_dataset_entries, 1000000, "most entries a dataset archive may hold");

namespace {

int Run() {
  namespace fs = std::filesystem;
  using namespace ft::server;

  const std::string data_dir = fs::absolute(absl::GetFlag(FLAGS_data_dir)).lexically_normal().string();
  if (auto s = ft::util::MakeDirs(data_dir); !s.ok()) {
    std::cerr << "finetuned: " << s.message() << std::endl;
    return 1;
  }

  // Signals are handled by one thread with sigwait, so block them everywhere first.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto store = SqliteJobStore::Create({data_dir + "/finetuned.db", nullptr});
  if (!store.ok()) {
    std::cerr << "finetuned: " << store.status().message() << std::endl;
    return 1;
  }
  auto models = FilesystemModelStore::Create({data_dir + "/models", nullptr});
  if (!models.ok()) {
    std::cerr << "finetuned: " << models.status().message() << std::endl;
    return 1;
  }
  EventHub hub;

  JobManagerOptions jm;
  const std::string roots = absl::GetFlag(FLAGS_dataset_roots);
  if (roots.empty()) {
    jm.dataset_roots = {data_dir + "/datasets", "/usr/share/datasets"};
  } else {
    for (absl::string_view r : absl::StrSplit(roots, ',', absl::SkipEmpty())) {
      jm.dataset_roots.push_back(fs::absolute(std::string(r)).lexically_normal().string());
    }
  }
  jm.weights_dir = absl::GetFlag(FLAGS_weights_dir).empty()
                       ? data_dir + "/weights"
                       : fs::absolute(absl::GetFlag(FLAGS_weights_dir)).string();
  jm.lease_ttl = absl::Seconds(absl::GetFlag(FLAGS_lease_ttl_seconds));
  jm.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  ft::datasets::DatasetStoreOptions dso;
  dso.root = data_dir + "/datasets-uploaded";
  dso.cache_root = data_dir + "/datasets-cache";
  dso.max_upload_bytes = absl::GetFlag(FLAGS_max_dataset_bytes);
  dso.extract.max_bytes = absl::GetFlag(FLAGS_max_dataset_extracted_bytes);
  dso.extract.max_entries = absl::GetFlag(FLAGS_max_dataset_entries);
  auto dataset_store = ft::datasets::DatasetStore::Create(dso);
  if (!dataset_store.ok()) {
    std::cerr << "finetuned: " << dataset_store.status().message() << std::endl;
    return 1;
  }
  jm.dataset_store = dataset_store->get();
  JobManager manager(jm, store->get(), &hub, models->get());


  std::unique_ptr<ServerMetrics> metrics;
  if (!absl::GetFlag(FLAGS_metrics_listen).empty()) {
    ServerMetricsOptions mo;
    mo.listen = absl::GetFlag(FLAGS_metrics_listen);
    mo.manager = &manager;
    auto m = ServerMetrics::Create(mo);
    if (!m.ok()) {
      std::cerr << "finetuned: " << m.status().message() << std::endl;
      return 1;
    }
    metrics = *std::move(m);
    manager.SetObserver(metrics.get());
  }

  const std::string worker_binary = absl::GetFlag(FLAGS_worker_binary).empty()
                                        ? ft::util::ExecutableDir() + "/finetune-worker"
                                        : absl::GetFlag(FLAGS_worker_binary);
  const int tool_threads = absl::GetFlag(FLAGS_worker_threads) > 0
                               ? absl::GetFlag(FLAGS_worker_threads)
                               : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  WorkerTool tool({worker_binary, tool_threads});
  FineTuneService api(&manager, &tool);
  WorkerGatewayService gateway(&manager);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&api);
  builder.RegisterService(&gateway);
  if (metrics) builder.experimental().SetInterceptorCreators(metrics->InterceptorCreators());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::cerr << "finetuned: cannot listen on " << absl::GetFlag(FLAGS_listen) << std::endl;
    return 1;
  }
  manager.Start();
  if (metrics) metrics->Start();
  if (!absl::GetFlag(FLAGS_port_file).empty()) {
    if (auto s = ft::util::WriteFileAtomic(absl::GetFlag(FLAGS_port_file), absl::StrCat(port, "\n"));
        !s.ok()) {
      std::cerr << "finetuned: " << s.message() << std::endl;
      return 1;
    }
  }
  ft::util::Log("info", "finetuned", "serving", {{"port", absl::StrCat(port)}, {"data_dir", data_dir}});

  LocalWorkerPoolOptions pool_options;
  pool_options.count = absl::GetFlag(FLAGS_local_workers);
  pool_options.worker_binary = worker_binary;
  pool_options.server_address = absl::StrCat("127.0.0.1:", port);
  pool_options.work_root = data_dir + "/work";
  int threads = absl::GetFlag(FLAGS_worker_threads);
  if (threads <= 0 && pool_options.count > 0) {
    threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / pool_options.count);
  }
  pool_options.threads_per_worker = threads;
  pool_options.extra_args = {absl::StrCat("--device=", absl::GetFlag(FLAGS_worker_device))};
  if (pool_options.count > 0 && !fs::exists(pool_options.worker_binary)) {
    std::cerr << "finetuned: worker binary " << pool_options.worker_binary
              << " not found (set --worker-binary, or --local-workers=0)" << std::endl;
    return 1;
  }
  LocalWorkerPool pool(pool_options);
  pool.Start();
  if (metrics) metrics->SetWorkerPool(&pool);

  int sig = 0;
  sigwait(&signals, &sig);
  ft::util::Log("info", "finetuned", "shutting down", {{"signal", absl::StrCat(sig)}});
  if (metrics) metrics->SetWorkerPool(nullptr);
  pool.Stop();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (metrics) metrics->Stop();
  manager.Shutdown();
  ft::util::Log("info", "finetuned", "stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("finetuned: the finetuned server. See README.md.");
  std::vector<std::string> args = ft::util::DashedFlagsToAbseil(argc, argv);
  std::vector<char*> argv2;
  for (auto& a : args) argv2.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(argv2.size()), argv2.data());
  ft::util::LogFormat format;
  if (!ft::util::ParseLogFormat(absl::GetFlag(FLAGS_log_format), &format)) {
    std::cerr << "finetuned: --log-format must be text or json" << std::endl;
    return 2;
  }
  ft::util::SetLogFormat(format);
  return Run();
}
