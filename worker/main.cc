// finetune-worker: leases jobs from finetuned and trains them with LibTorch.
#include <signal.h>
#include <unistd.h>

#include <iostream>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "proto/util/files.h"
#include "proto/util/flag_names.h"
#include "worker/agent/agent.h"
#include "worker/agent/worker_metrics.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "finetuned address");
ABSL_FLAG(std::string, device, "auto", "auto, cpu, cuda or cuda:N");
ABSL_FLAG(int, threads, 0, "LibTorch threads (default: the cores available)");
ABSL_FLAG(std::string, work_dir, "./var/worker", "scratch space for exports and fetched models");
ABSL_FLAG(std::string, worker_id, "", "name shown in job events (default: hostname-pid)");
ABSL_FLAG(int, parent_pid, 0, "exit when this process is gone (set by finetuned for local workers)");
ABSL_FLAG(int, max_jobs, 0, "exit after this many jobs; 0 runs forever");
ABSL_FLAG(std::string, metrics_listen, "", "Prometheus endpoint host:port (GET /metrics); empty disables it");
ABSL_FLAG(bool, version, false, "print the version and LibTorch build, then exit");

namespace {

ft::worker::Agent* g_agent = nullptr;

void OnSignal(int) {
  if (g_agent) g_agent->Stop();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("finetune-worker --server ADDR [--device auto|cpu|cuda[:N]] [--threads N]");
  std::vector<std::string> args = ft::util::DashedFlagsToAbseil(argc, argv);
  std::vector<char*> argv2;
  for (auto& a : args) argv2.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(argv2.size()), argv2.data());
  if (absl::GetFlag(FLAGS_version)) {
    std::cout << "finetune-worker 0.1.0, LibTorch " << TORCH_VERSION
              << (torch::cuda::is_available() ? ", CUDA available" : ", CPU only") << std::endl;
    return 0;
  }
  ft::worker::AgentOptions options;
  options.server_address = absl::GetFlag(FLAGS_server);
  options.work_dir = absl::GetFlag(FLAGS_work_dir);
  options.parent_pid = absl::GetFlag(FLAGS_parent_pid);
  options.max_jobs = absl::GetFlag(FLAGS_max_jobs);

  const std::string device = absl::GetFlag(FLAGS_device);
  try {
    if (device == "auto") {
      options.device = torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
    } else {
      options.device = torch::Device(device);
      if (options.device.is_cuda() && !torch::cuda::is_available()) {
        std::cerr << "finetune-worker: --device=" << device << " but this LibTorch sees no CUDA device"
                  << std::endl;
        return 2;
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "finetune-worker: bad --device '" << device << "' (use auto, cpu, cuda or cuda:N)" << std::endl;
    return 2;
  }
  int threads = absl::GetFlag(FLAGS_threads);
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // OpenMP would otherwise start LibTorch with one thread here.
  torch::set_num_threads(threads);
  options.threads = threads;
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  options.worker_id = absl::GetFlag(FLAGS_worker_id).empty() ? absl::StrCat(host, "-", ::getpid())
                                                             : absl::GetFlag(FLAGS_worker_id);
  if (auto s = ft::util::MakeDirs(options.work_dir); !s.ok()) {
    std::cerr << "finetune-worker: " << s.message() << std::endl;
    return 1;
  }
  std::unique_ptr<ft::worker::WorkerMetrics> metrics;
  if (!absl::GetFlag(FLAGS_metrics_listen).empty()) {
    auto m = ft::worker::WorkerMetrics::Create(absl::GetFlag(FLAGS_metrics_listen));
    if (!m.ok()) {
      std::cerr << "finetune-worker: " << m.status().message() << std::endl;
      return 1;
    }
    metrics = *std::move(m);
    options.metrics = metrics.get();
  }
  ft::worker::Agent agent(options);
  g_agent = &agent;
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  std::cerr << "finetune-worker " << options.worker_id << ": " << options.device.str() << ", " << threads
            << " threads, server " << options.server_address << std::endl;
  auto status = agent.Run();
  if (!status.ok()) {
    std::cerr << "finetune-worker: " << status.message() << std::endl;
    return 1;
  }
  return 0;
}
