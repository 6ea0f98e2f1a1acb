// finetune-worker: leases jobs from finetuned and trains them with LibTorch.
#include <signal.h>
#include <unistd.h>

#include <iostream>
#include <iterator>
#include <thread>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/util/files.h"
#include "common/util/log.h"
#include "common/util/flag_names.h"
#include "common/util/proto_json.h"
#include "worker/agent/agent.h"
#include "worker/agent/credentials.h"
#include "worker/agent/tools.h"
#include "worker/agent/worker_metrics.h"
#include "worker/train/torch_process.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "finetuned address");
ABSL_FLAG(std::string, device, "auto", "auto, cpu, cuda or cuda:N");
ABSL_FLAG(int, threads, 0, "LibTorch threads (default: the cores available)");
ABSL_FLAG(std::string, work_dir, "./var/worker", "scratch space for exports and fetched models");
ABSL_FLAG(int64_t, decode_cache_mb, 4096,
          "decoded images a job keeps in memory, at most (MiB); the rest are decoded again every epoch. "
          "0 keeps none");
ABSL_FLAG(std::string, fetch_datasets, "auto",
          "uploaded and archived datasets: auto (use the server's extracted copy when readable here, else fetch "
          "and cache in <work-dir>/datasets) or always (fetch and cache)");
ABSL_FLAG(std::string, worker_id, "", "name shown in job events (default: hostname-pid)");
ABSL_FLAG(int, parent_pid, 0, "exit when this process is gone (set by finetuned for local workers)");
ABSL_FLAG(int, max_jobs, 0, "exit after this many jobs; 0 runs forever");
ABSL_FLAG(std::string, metrics_listen, "", "Prometheus endpoint host:port (GET /metrics); empty disables it");
ABSL_FLAG(std::string, c10d_host, "",
          "the address other workers reach this one at, for multi-worker jobs (c10d; default: the hostname); "
          "'none' takes single-worker jobs only");
ABSL_FLAG(std::string, c10d_ports, "29500-29599",
          "ports this worker may open a multi-worker job's rendezvous (TCPStore) on as its rank 0, LO-HI");
ABSL_FLAG(int, c10d_timeout_seconds, 600,
          "how long a multi-worker job waits for its ranks to join, and then for any collective");
ABSL_FLAG(std::string, tool, "",
          "run one tool and exit (the server does this for ValidateJob and Predict): validate or predict, "
          "with a binary finetune.v1.ToolRequest on stdin and a ToolReply on stdout");
ABSL_FLAG(std::string, log_format, "text", "log lines on stderr: text or json");
ABSL_FLAG(bool, version, false, "print the version and LibTorch build, then exit");
ABSL_FLAG(bool, tls, false, "TLS to the server, verified against the system's roots");
ABSL_FLAG(std::string, tls_ca, "", "TLS, verifying the server against this PEM CA (default $FINETUNE_TLS_CA)");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate for an mTLS server (default $FINETUNE_TLS_CERT)");
ABSL_FLAG(std::string, tls_key, "", "PEM key of --tls-cert (default $FINETUNE_TLS_KEY)");
ABSL_FLAG(std::string, tls_server_name, "",
          "the name the server's certificate must carry, if not the host of --server");
ABSL_FLAG(std::string, token_file, "", "bearer token with role worker, first line (default $FINETUNE_TOKEN)");

namespace {

ft::worker::Agent* g_agent = nullptr;

// Reads one binary ToolRequest on stdin, runs it, and writes one binary
// ToolReply on stdout: errors travel in the reply, not as text on stderr.
int RunTool(const std::string& tool) {
  std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  finetune::v1::ToolRequest request;
  finetune::v1::ToolReply reply;
  auto fail = [&reply](const absl::Status& s) {
    reply.set_code(static_cast<int>(s.code()));
    reply.set_message(std::string(s.message()));
  };
  if (!request.ParseFromString(input)) {
    fail(absl::InvalidArgumentError("--tool: stdin is not a ToolRequest"));
  } else if (tool == "validate" && request.has_validate()) {
    auto report = ft::worker::ValidateJobTool(request.validate());
    if (report.ok()) {
      *reply.mutable_validation() = *std::move(report);
    } else {
      fail(report.status());
    }
  } else if (tool == "predict" && request.has_predict()) {
    const auto& p = request.predict();
    auto response = ft::worker::PredictTool(p.model_dir(), {p.image_paths().begin(), p.image_paths().end()},
                                            p.top_k() > 0 ? p.top_k() : 5);
    if (response.ok()) {
      *reply.mutable_prediction() = *std::move(response);
    } else {
      fail(response.status());
    }
  } else {
    fail(absl::InvalidArgumentError(
        absl::StrCat("--tool=", tool, ": unknown tool or a request for another (validate, predict)")));
  }
  std::cout << reply.SerializeAsString() << std::flush;
  return std::cout ? 0 : 1;
}

// SIGTERM is a preemption (Kubernetes, the local pool stopping): the job
// finishes its step, checkpoints, and is given back. SIGINT cancels it.
void OnSignal(int sig) {
  if (g_agent == nullptr) return;
  if (sig == SIGTERM) {
    g_agent->Preempt();
  } else {
    g_agent->Stop();
  }
}

// Two settings that libraries read once, when they load, before main():
// - OMP_WAIT_POLICY=passive. GNU OpenMP's threads spin at every barrier
//   before they sleep. Where other processes share the cores (a second
//   job's worker, the server's tools, other pods), a job then ran 3x slower;
//   passive, 1.0x (bench/contention.py, bench/README.md "Contention"), for
//   up to ~7% alone.
// - TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD: tcmalloc (linked: bench/README.md
//   "Allocator") prints a stack trace to stderr for every allocation over
//   1 GiB, which a large feature cache or decoded dataset makes; 1 TiB.
// A worker started without them sets what is missing and executes itself
// again (same pid, same arguments); what the user set is kept. Tool runs
// (--tool=...), short and many, are left as they are.
void PreferProcessEnvironment(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (absl::StartsWith(argv[i], "--tool")) return;
  }
  static constexpr std::pair<const char*, const char*> kDefaults[] = {
      {"OMP_WAIT_POLICY", "passive"},
      {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", "1099511627776"},
  };
  std::vector<const char*> missing;
  for (const auto& [name, value] : kDefaults) {
    if (::getenv(name) == nullptr) missing.push_back(name);
  }
  if (missing.empty()) return;
  // By its real path: the process name (ps, pkill) comes from it.
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return;  // no /proc: go on as started
  self[n] = '\0';
  for (const auto& [name, value] : kDefaults) ::setenv(name, value, /*overwrite=*/0);
  ::execv(self, argv);
  for (const char* name : missing) ::unsetenv(name);  // it did not run: go on as started
}

}  // namespace

int main(int argc, char** argv) {
  PreferProcessEnvironment(argc, argv);
  absl::SetProgramUsageMessage("finetune-worker --server ADDR [--device auto|cpu|cuda[:N]] [--threads N]");
  std::vector<std::string> args = ft::util::DashedFlagsToAbseil(argc, argv);
  std::vector<char*> argv2;
  for (auto& a : args) argv2.push_back(a.data());
  std::vector<char*> rest = absl::ParseCommandLine(static_cast<int>(argv2.size()), argv2.data());
  if (rest.size() > 1) {
    std::cerr << "finetune-worker: unexpected argument '" << rest[1] << "'" << std::endl;
    return 2;
  }
  ft::util::LogFormat format;
  if (!ft::util::ParseLogFormat(absl::GetFlag(FLAGS_log_format), &format)) {
    std::cerr << "finetune-worker: --log-format must be text or json" << std::endl;
    return 2;
  }
  ft::util::SetLogFormat(format);
  if (absl::GetFlag(FLAGS_version)) {
    std::cout << "finetune-worker 0.1.0, LibTorch " << TORCH_VERSION
              << (torch::cuda::is_available() ? ", CUDA available" : ", CPU only") << ", BLAS "
              << ft::worker::BlasInUse() << ", allocator " << ft::worker::AllocatorInUse() << std::endl;
    return 0;
  }
  ft::worker::AgentOptions options;
  options.server_address = absl::GetFlag(FLAGS_server);
  options.work_dir = absl::GetFlag(FLAGS_work_dir);
  if (absl::GetFlag(FLAGS_decode_cache_mb) < 0 || absl::GetFlag(FLAGS_decode_cache_mb) > (int64_t{1} << 30)) {
    std::cerr << "finetune-worker: --decode-cache-mb must be between 0 and 2^30" << std::endl;
    return 2;
  }
  options.decode_cache_bytes = absl::GetFlag(FLAGS_decode_cache_mb) << 20;
  options.parent_pid = absl::GetFlag(FLAGS_parent_pid);
  options.max_jobs = absl::GetFlag(FLAGS_max_jobs);
  options.fetch_datasets = absl::GetFlag(FLAGS_fetch_datasets);
  if (options.fetch_datasets != "auto" && options.fetch_datasets != "always") {
    std::cerr << "finetune-worker: --fetch-datasets must be auto or always" << std::endl;
    return 2;
  }

  {
    const std::string ports = absl::GetFlag(FLAGS_c10d_ports);
    const size_t dash = ports.find('-');
    int lo = 0, hi = 0;
    if (dash == std::string::npos || !absl::SimpleAtoi(ports.substr(0, dash), &lo) ||
        !absl::SimpleAtoi(ports.substr(dash + 1), &hi) || lo < 1 || hi > 65535 || lo > hi) {
      std::cerr << "finetune-worker: --c10d-ports must be LO-HI (1 <= LO <= HI <= 65535), got '" << ports << "'"
                << std::endl;
      return 2;
    }
    options.c10d_port_min = lo;
    options.c10d_port_max = hi;
    if (absl::GetFlag(FLAGS_c10d_timeout_seconds) < 1) {
      std::cerr << "finetune-worker: --c10d-timeout-seconds must be at least 1" << std::endl;
      return 2;
    }
    options.c10d_timeout = absl::Seconds(absl::GetFlag(FLAGS_c10d_timeout_seconds));
  }

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
  // LibTorch's process-wide settings, once, for the lease loop and tools alike.
  ft::worker::InitTorchProcess(threads);
  if (!absl::GetFlag(FLAGS_tool).empty()) return RunTool(absl::GetFlag(FLAGS_tool));
  options.threads = threads;
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  options.worker_id = absl::GetFlag(FLAGS_worker_id).empty() ? absl::StrCat(host, "-", ::getpid())
                                                             : absl::GetFlag(FLAGS_worker_id);
  options.c10d_host = absl::GetFlag(FLAGS_c10d_host).empty() ? std::string(host) : absl::GetFlag(FLAGS_c10d_host);
  if (options.c10d_host == "none") options.c10d_host.clear();
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
  auto channel = ft::worker::WorkerChannel(
      options.server_address,
      {absl::GetFlag(FLAGS_tls), absl::GetFlag(FLAGS_tls_ca), absl::GetFlag(FLAGS_tls_cert),
       absl::GetFlag(FLAGS_tls_key), absl::GetFlag(FLAGS_tls_server_name), absl::GetFlag(FLAGS_token_file)});
  if (!channel.ok()) {
    std::cerr << "finetune-worker: " << channel.status().message() << std::endl;
    return 2;
  }
  options.channel = *std::move(channel);
  ft::worker::Agent agent(options);
  g_agent = &agent;
  // A parent may have started us with these blocked (a blocked SIGTERM
  // could never preempt): this thread takes them.
  sigset_t ours;
  sigemptyset(&ours);
  sigaddset(&ours, SIGINT);
  sigaddset(&ours, SIGTERM);
  pthread_sigmask(SIG_UNBLOCK, &ours, nullptr);
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  std::cerr << "finetune-worker " << options.worker_id << ": " << options.device.str() << ", " << threads
            << " threads, BLAS " << ft::worker::BlasInUse() << ", allocator " << ft::worker::AllocatorInUse()
            << ", server " << options.server_address << std::endl;
  auto status = agent.Run();
  if (!status.ok()) {
    std::cerr << "finetune-worker: " << status.message() << std::endl;
    return 1;
  }
  return 0;
}
