// WatchJob fan-out: N concurrent watchers of one job, fed by a fake worker
// over WorkerGateway, against a real finetuned (--local-workers=0).
//
//   ft_bench_watch_fanout --server 127.0.0.1:PORT --dataset file:///dir [--streams 1000]
//       [--events 200] [--interval-ms 20]
//
// The worker sends log events whose message is its send time (steady clock,
// ns: the same machine). Each watcher records the delay from send to
// receive, and the sequence numbers it saw. Prints one JSON line: streams,
// events each stream got, whether every stream saw the same gap-free
// sequence, and the p50/p99/max delay in ms.
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
#include "absl/strings/numbers.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "finetune/v1/finetune.grpc.pb.h"
#include "finetune/v1/worker.grpc.pb.h"
#include "grpcpp/grpcpp.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "finetuned address");
ABSL_FLAG(std::string, dataset, "", "a dataset URI the server accepts");
ABSL_FLAG(int, streams, 1000, "concurrent WatchJob streams");
ABSL_FLAG(int, events, 200, "live events the fake worker sends");
ABSL_FLAG(int, interval_ms, 20, "between live events");
ABSL_FLAG(std::string, watch_server, "",
          "where the watchers connect (another replica on the same database); default --server");

namespace pb = ::finetune::v1;
namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

class Watcher final : public grpc::ClientReadReactor<pb::JobEvent> {
 public:
  Watcher(pb::FineTune::Stub* stub, const std::string& job_id) {
    request_.set_job_id(job_id);
    stub->async()->WatchJob(&ctx_, &request_, this);
    StartRead(&event_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    {
      absl::MutexLock lock(&mu_);
      sequences_.push_back(event_.sequence());
      int64_t sent = 0;
      if (event_.has_log() && absl::SimpleAtoi(event_.log().message(), &sent)) {
        delays_ms_.push_back(static_cast<double>(NowNs() - sent) / 1e6);
      }
    }
    StartRead(&event_);
  }
  void OnDone(const grpc::Status& s) override {
    absl::MutexLock lock(&mu_);
    status_ = s;
    done_ = true;
  }
  // False when the stream has not ended within `timeout`.
  bool AwaitDone(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&done_), timeout);
  }
  int Received() {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(sequences_.size());
  }
  std::vector<int64_t> sequences() {
    absl::MutexLock lock(&mu_);
    return sequences_;
  }
  std::vector<double> delays() {
    absl::MutexLock lock(&mu_);
    return delays_ms_;
  }
  grpc::Status status() {
    absl::MutexLock lock(&mu_);
    return status_;
  }

 private:
  grpc::ClientContext ctx_;
  pb::WatchJobRequest request_;
  pb::JobEvent event_;
  absl::Mutex mu_;
  std::vector<int64_t> sequences_ ABSL_GUARDED_BY(mu_);
  std::vector<double> delays_ms_ ABSL_GUARDED_BY(mu_);
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5))];
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  grpc::ChannelArguments args;
  // Many streams on one channel would share one HTTP/2 connection's stream
  // limit; spread them over a few connections, as many clients would be.
  std::vector<std::unique_ptr<pb::FineTune::Stub>> stubs;
  for (int i = 0; i < 8; ++i) {
    grpc::ChannelArguments a;
    a.SetInt("ft.bench.channel", i);  // distinct args: distinct connections
    const std::string watch_at =
        absl::GetFlag(FLAGS_watch_server).empty() ? absl::GetFlag(FLAGS_server) : absl::GetFlag(FLAGS_watch_server);
    stubs.push_back(
        pb::FineTune::NewStub(grpc::CreateCustomChannel(watch_at, grpc::InsecureChannelCredentials(), a)));
  }
  // The job is submitted, and its worker talks, through --server.
  auto submit_stub = pb::FineTune::NewStub(
      grpc::CreateChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials()));
  auto gateway = pb::WorkerGateway::NewStub(
      grpc::CreateChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials()));

  pb::Job job;
  {
    grpc::ClientContext ctx;
    pb::SubmitJobRequest req;
    req.mutable_spec()->set_backbone("resnet18");
    req.mutable_spec()->set_dataset_uri(absl::GetFlag(FLAGS_dataset));
    grpc::Status s = submit_stub->SubmitJob(&ctx, req, &job);
    if (!s.ok()) {
      std::fprintf(stderr, "submit: %s\n", s.error_message().c_str());
      return 1;
    }
  }
  pb::LeaseJobResponse lease;
  {
    grpc::ClientContext ctx;
    pb::LeaseJobRequest req;
    req.mutable_worker()->set_worker_id("bench-worker");
    req.set_wait_seconds(10);
    if (!gateway->LeaseJob(&ctx, req, &lease).ok() || !lease.leased()) {
      std::fprintf(stderr, "no lease\n");
      return 1;
    }
  }
  const int n = absl::GetFlag(FLAGS_streams);
  std::vector<std::unique_ptr<Watcher>> watchers;
  for (int i = 0; i < n; ++i) watchers.push_back(std::make_unique<Watcher>(stubs[i % stubs.size()].get(), job.id()));
  // Every watcher has replayed the history (submit and lease) before the live part.
  {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (auto& w : watchers) {
      while (w->Received() < 2) {
        if (std::chrono::steady_clock::now() > deadline) {
          int short_of = 0;
          for (auto& v : watchers) short_of += v->Received() < 2 ? 1 : 0;
          std::fprintf(stderr, "%d of %d watchers did not replay the job's first 2 events within 30 s\n", short_of,
                       n);
          return 1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
  }

  grpc::ClientContext run_ctx;
  auto stream = gateway->RunJob(&run_ctx);
  pb::WorkerMessage hello;
  hello.mutable_hello()->set_job_id(lease.lease().job_id());
  hello.mutable_hello()->set_lease_id(lease.lease().lease_id());
  hello.mutable_hello()->set_worker_id("bench-worker");
  stream->Write(hello);
  const int events = absl::GetFlag(FLAGS_events);
  for (int i = 0; i < events; ++i) {
    pb::WorkerMessage m;
    m.mutable_event()->mutable_log()->set_level("info");
    m.mutable_event()->mutable_log()->set_message(std::to_string(NowNs()));
    stream->Write(m);
    std::this_thread::sleep_for(std::chrono::milliseconds(absl::GetFlag(FLAGS_interval_ms)));
  }
  pb::WorkerMessage result;
  result.mutable_result()->set_state(pb::CANCELLED);
  stream->Write(result);
  stream->WritesDone();
  pb::ServerMessage ignored;
  while (stream->Read(&ignored)) {
  }
  stream->Finish();

  {
    // A watcher whose stream does not end: say how far each got.
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    int unfinished = 0;
    std::map<int, int> stuck_at;  // events received -> watchers
    for (auto& w : watchers) {
      if (!w->AwaitDone(std::max(absl::ZeroDuration(), deadline - absl::Now()))) {
        ++unfinished;
        ++stuck_at[w->Received()];
      }
    }
    if (unfinished > 0) {
      std::string where;
      for (const auto& [got, count] : stuck_at) where += " " + std::to_string(count) + "x" + std::to_string(got);
      std::fprintf(stderr, "%d of %d watch streams did not end within 30 s of the job's end (watchers x events "
                   "received:%s; the job has %d)\n", unfinished, n, where.c_str(), events + 3);
      std::_Exit(1);
    }
  }
  std::vector<double> delays;
  const std::vector<int64_t> first = watchers[0]->sequences();
  bool same = true, gap_free = true, all_ok = true;
  for (size_t i = 0; i < first.size(); ++i) gap_free &= first[i] == static_cast<int64_t>(i + 1);
  for (auto& w : watchers) {
    all_ok &= w->status().ok();
    same &= w->sequences() == first;
    for (double d : w->delays()) delays.push_back(d);
  }
  std::printf(
      "{\"streams\": %d, \"events_per_stream\": %zu, \"live_events\": %d, \"all_finished_ok\": %s, "
      "\"same_sequence\": %s, \"gap_free\": %s, \"delay_ms_p50\": %.2f, \"delay_ms_p99\": %.2f, "
      "\"delay_ms_max\": %.2f, \"samples\": %zu}\n",
      n, first.size(), events, all_ok ? "true" : "false", same ? "true" : "false", gap_free ? "true" : "false",
      Percentile(delays, 0.5), Percentile(delays, 0.99), Percentile(delays, 1.0), delays.size());
  return same && gap_free && all_ok ? 0 : 1;
}
