// SubmitJob under load: C concurrent gRPC clients submit N jobs each to a
// real finetuned (--local-workers=0, so the jobs stay queued), while one more
// client times ListJobs beside them.
//
//   ft_bench_submit_load --server 127.0.0.1:PORT[,PORT2...] --dataset file:///dir [--clients 50]
//       [--per-client 10] [--leasers 0]
//
// With several servers (replicas on one database), client c talks to server
// c mod their number. With --leasers L, L fake workers (WorkerGateway
// clients, spread alike) then lease the queued jobs as fast as they can,
// each lease one LeaseJob call, until the queue is empty.
//
// Prints one JSON line: submits that succeeded, submits/s, and the median,
// p99 and max latency of the submits and of the ListJobs calls; with
// leasers, leases, leases/s, jobs leased more than once (must be 0) and the
// lease latency.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "finetune/v1/finetune.grpc.pb.h"
#include "finetune/v1/worker.grpc.pb.h"
#include "grpcpp/grpcpp.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "finetuned address");
ABSL_FLAG(std::string, dataset, "", "a dataset URI the server accepts");
ABSL_FLAG(int, clients, 50, "concurrent submitting clients, each on its own connection");
ABSL_FLAG(int, per_client, 10, "submits per client");
ABSL_FLAG(int, leasers, 0, "fake workers that then lease every queued job");

namespace pb = ::finetune::v1;
namespace {

using Clock = std::chrono::steady_clock;

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5))];
}

std::vector<std::string> Servers() { return absl::StrSplit(absl::GetFlag(FLAGS_server), ','); }

std::shared_ptr<grpc::Channel> Channel(int i) {
  const std::vector<std::string> servers = Servers();
  grpc::ChannelArguments a;
  a.SetInt("ft.bench.client", i);  // a connection of its own, as a separate client has
  return grpc::CreateCustomChannel(servers[static_cast<size_t>(std::max(0, i)) % servers.size()],
                                   grpc::InsecureChannelCredentials(), a);
}

std::unique_ptr<pb::FineTune::Stub> Connect(int i) { return pb::FineTune::NewStub(Channel(i)); }

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int clients = absl::GetFlag(FLAGS_clients), per = absl::GetFlag(FLAGS_per_client);
  absl::Mutex mu;
  std::vector<double> submit_ms, list_ms;
  std::atomic<int> ok{0};
  std::atomic<bool> done{false};
  std::thread lister([&] {
    auto stub = Connect(-1);
    while (!done) {
      grpc::ClientContext ctx;
      pb::ListJobsRequest req;
      req.set_limit(20);
      pb::ListJobsResponse resp;
      const auto t0 = Clock::now();
      grpc::Status s = stub->ListJobs(&ctx, req, &resp);
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      absl::MutexLock lock(&mu);
      list_ms.push_back(s.ok() ? ms : 1e9);
    }
  });
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto stub = Connect(c);
      for (int k = 0; k < per; ++k) {
        grpc::ClientContext ctx;
        pb::SubmitJobRequest req;
        req.mutable_spec()->set_backbone("resnet18");
        req.mutable_spec()->set_dataset_uri(absl::GetFlag(FLAGS_dataset));
        req.mutable_spec()->set_name("load-" + std::to_string(c) + "-" + std::to_string(k));
        pb::Job job;
        const auto t0 = Clock::now();
        grpc::Status s = stub->SubmitJob(&ctx, req, &job);
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        if (s.ok()) ++ok;
        absl::MutexLock lock(&mu);
        submit_ms.push_back(ms);
      }
    });
  }
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  done = true;
  lister.join();
  // Leasing: every queued job, once.
  const int leasers = absl::GetFlag(FLAGS_leasers);
  std::vector<double> lease_ms;
  std::map<std::string, int> leased;
  double lease_wall = 0;
  if (leasers > 0) {
    const auto lease_start = Clock::now();
    std::vector<std::thread> workers;
    for (int w = 0; w < leasers; ++w) {
      workers.emplace_back([&, w] {
        auto stub = pb::WorkerGateway::NewStub(Channel(w));
        while (true) {
          grpc::ClientContext ctx;
          pb::LeaseJobRequest req;
          req.mutable_worker()->set_worker_id("bench-" + std::to_string(w));
          req.mutable_worker()->set_device("cpu");
          req.set_wait_seconds(0);
          pb::LeaseJobResponse resp;
          const auto t0 = Clock::now();
          grpc::Status s = stub->LeaseJob(&ctx, req, &resp);
          const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
          if (!s.ok() || !resp.leased()) return;
          absl::MutexLock lock(&mu);
          lease_ms.push_back(ms);
          ++leased[resp.lease().job_id()];
        }
      });
    }
    for (auto& t : workers) t.join();
    lease_wall = std::chrono::duration<double>(Clock::now() - lease_start).count();
  }
  int twice = 0;
  for (const auto& [id, n] : leased) twice += n > 1 ? 1 : 0;
  std::printf(
      "{\"submits\": %d, \"ok\": %d, \"wall_s\": %.2f, \"submits_per_s\": %.1f, \"submit_ms_p50\": %.1f, "
      "\"submit_ms_p99\": %.1f, \"submit_ms_max\": %.1f, \"lists\": %zu, \"list_ms_p50\": %.1f, "
      "\"list_ms_p99\": %.1f, \"list_ms_max\": %.1f, \"servers\": %zu, \"leasers\": %d, \"leases\": %zu, "
      "\"leased_twice\": %d, \"leases_per_s\": %.1f, \"lease_ms_p50\": %.1f, \"lease_ms_p99\": %.1f}\n",
      clients * per, ok.load(), wall, clients * per / wall, Percentile(submit_ms, 0.5), Percentile(submit_ms, 0.99),
      Percentile(submit_ms, 1.0), list_ms.size(), Percentile(list_ms, 0.5), Percentile(list_ms, 0.99),
      Percentile(list_ms, 1.0), Servers().size(), leasers, lease_ms.size(), twice,
      lease_wall > 0 ? static_cast<double>(lease_ms.size()) / lease_wall : 0.0, Percentile(lease_ms, 0.5),
      Percentile(lease_ms, 0.99));
  return ok == clients * per && twice == 0 ? 0 : 1;
}
