#include "worker/train/gang.h"

#include <algorithm>
#include <exception>
#include <map>
#include <thread>
#include <utility>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef FT_HAVE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "worker/train/first_line.h"

namespace ft::worker {

// Both backends' process groups have the same collectives (ProcessGroup in
// LibTorch 1.x, Backend in 2.x): one template serves them.
class Gang::Group {
 public:
  virtual ~Group() = default;
  virtual c10::intrusive_ptr<c10d::Work> AllReduce(std::vector<at::Tensor>& tensors) = 0;
  virtual c10::intrusive_ptr<c10d::Work> Broadcast(std::vector<at::Tensor>& tensors) = 0;
  virtual c10d::Store& store() = 0;
};

namespace {

template <typename PG>
class GroupOf : public Gang::Group {
 public:
  GroupOf(c10::intrusive_ptr<c10d::Store> store, c10::intrusive_ptr<PG> group)
      : store_(std::move(store)), group_(std::move(group)) {}
  c10::intrusive_ptr<c10d::Work> AllReduce(std::vector<at::Tensor>& tensors) override {
    return group_->allreduce(tensors);
  }
  c10::intrusive_ptr<c10d::Work> Broadcast(std::vector<at::Tensor>& tensors) override {
    c10d::BroadcastOptions options;
    options.rootRank = 0;
    return group_->broadcast(tensors, options);
  }
  c10d::Store& store() override { return *store_; }

 private:
  // The store outlives the group, which uses it to connect.
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<PG> group_;
};

}  // namespace

namespace {

using Clock = std::chrono::steady_clock;

// This group's keys in rank 0's store.
struct Keys {
  explicit Keys(const GangOptions& options) : base(absl::StrCat("ft/", options.key_prefix, "/")) {}
  std::string arrived() const { return base + "arrived"; }
  std::string failures() const { return base + "failures"; }
  // Ranks other than 0 that will never arrive: they failed before joining,
  // or learnt why the job ended from the store.
  std::string gone() const { return base + "gone"; }
  std::string failed(int rank) const { return absl::StrCat(base, "failed/", rank); }
  const std::string base;
};

std::string Where(const GangOptions& options) { return absl::StrCat(options.master_host, ":", options.master_port); }

bool Stopped(const GangOptions& options) { return options.stopped && options.stopped(); }

// Rank 0's TCPStore: opened by rank 0; reached by the others, which try
// again until options.timeout has passed, unless options.stopped.
absl::StatusOr<c10::intrusive_ptr<c10d::TCPStore>> ReachStore(const GangOptions& options) {
  const auto deadline = Clock::now() + options.timeout;
  while (true) {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(options.master_port);
    store_options.isServer = options.rank == 0;
    store_options.numWorkers = options.world_size;
    // Every rank's arrival is awaited below, where a failure can cut it short.
    store_options.waitWorkers = false;
    // Short tries, between which `stopped` is asked; c10d counts a connect
    // timeout in whole seconds.
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    store_options.timeout = options.rank == 0
                                ? options.timeout
                                : std::clamp(left, std::chrono::milliseconds(1000), std::chrono::milliseconds(2000));
    std::string why;
    try {
      auto store = c10::make_intrusive<c10d::TCPStore>(options.master_host, store_options);
      store->setTimeout(options.timeout);
      return store;
    } catch (const std::exception& e) {
      why = FirstLine(e.what());
    }
    if (options.rank == 0 || Clock::now() >= deadline) {
      return absl::UnavailableError(absl::StrCat("rank ", options.rank, " of ", options.world_size,
                                                 options.rank == 0 ? " could not open" : " could not reach",
                                                 " the group's store at ", Where(options), ": ", why));
    }
    if (Stopped(options)) {
      return absl::CancelledError(absl::StrCat("stopped while reaching the group's store at ", Where(options)));
    }
  }
}

void WriteFailure(c10d::Store& store, const GangOptions& options, const absl::Status& status) {
  const std::string text = absl::StrCat(static_cast<int>(status.code()), "\n", "rank ", options.rank, " of ",
                                        options.world_size, " (worker ", options.worker_id, "): ", status.message());
  const Keys keys(options);
  store.set(keys.failed(options.rank), std::vector<uint8_t>(text.begin(), text.end()));
  // A round trip after the set: it is in the store before this rank's
  // connections close and its peers' collectives fail.
  store.add(keys.failures(), 1);
}

std::optional<absl::Status> ReadFailure(c10d::Store& store, const GangOptions& options) {
  const Keys keys(options);
  if (store.add(keys.failures(), 0) == 0) return std::nullopt;
  for (int r = 0; r < options.world_size; ++r) {
    if (r == options.rank || !store.check({keys.failed(r)})) continue;
    const std::vector<uint8_t> value = store.get(keys.failed(r));
    const std::string text(value.begin(), value.end());
    const size_t newline = text.find('\n');
    int code = 0;
    if (newline == std::string::npos || !absl::SimpleAtoi(text.substr(0, newline), &code) || code <= 0 ||
        code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
      code = static_cast<int>(absl::StatusCode::kUnknown);
    }
    return absl::Status(static_cast<absl::StatusCode>(code),
                        newline == std::string::npos ? text : text.substr(newline + 1));
  }
  return std::nullopt;
}

// Every rank counts itself in, then waits until all have, or until one
// reports a failure (its status), or the timeout (UNAVAILABLE), or
// options.stopped (CANCELLED, after telling the others).
absl::Status AwaitRanks(c10d::Store& store, const GangOptions& options) {
  const Keys keys(options);
  store.add(keys.arrived(), 1);
  const auto deadline = Clock::now() + options.timeout;
  while (true) {
    if (std::optional<absl::Status> failure = ReadFailure(store, options)) return *failure;
    const int64_t arrived = store.add(keys.arrived(), 0);
    if (arrived >= options.world_size) return absl::OkStatus();
    if (Stopped(options)) {
      WriteFailure(store, options, absl::UnavailableError("stopped before the group formed"));
      return absl::CancelledError("stopped while waiting for the group to form");
    }
    if (Clock::now() >= deadline) {
      return absl::UnavailableError(absl::StrCat(
          "rank ", options.rank, ": only ", arrived, " of ", options.world_size, " workers reached the group at ",
          Where(options), " within ", std::chrono::duration_cast<std::chrono::seconds>(options.timeout).count(),
          " s"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace

void Gang::ReportBeforeJoining(const GangOptions& options, const absl::Status& status) {
  if (options.world_size < 2 || options.rank < 0 || options.rank >= options.world_size || status.ok()) return;
  absl::StatusOr<c10::intrusive_ptr<c10d::TCPStore>> store = ReachStore(options);
  if (!store.ok()) return;
  try {
    WriteFailure(**store, options, status);
    const Keys keys(options);
    if (options.rank > 0) {
      (*store)->add(keys.gone(), 1);
      return;
    }
    // The store lives in this process: held open until the others have
    // come (each counts itself in, then reads the failures) or gone.
    const auto deadline = Clock::now() + options.timeout;
    while ((*store)->add(keys.arrived(), 0) + (*store)->add(keys.gone(), 0) < options.world_size - 1 &&
           Clock::now() < deadline && !Stopped(options)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::this_thread::sleep_for(std::chrono::seconds(2));
  } catch (const std::exception&) {
    // Rank 0 is gone too, or its store failed: no one left to tell.
  }
}

std::optional<absl::Status> Gang::PeerFailureBeforeJoining(const GangOptions& options) {
  if (options.world_size < 2 || options.rank <= 0 || options.rank >= options.world_size) return std::nullopt;
  absl::StatusOr<c10::intrusive_ptr<c10d::TCPStore>> store = ReachStore(options);
  if (!store.ok()) return std::nullopt;
  const auto deadline = Clock::now() + options.timeout;
  try {
    while (true) {
      if (std::optional<absl::Status> failure = ReadFailure(**store, options)) {
        (*store)->add(Keys(options).gone(), 1);
        return failure;
      }
      if (Clock::now() >= deadline || Stopped(options)) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  } catch (const std::exception&) {
    // Rank 0's store closed: it told no one.
    return std::nullopt;
  }
}

void Gang::ReportFailure(const absl::Status& status) {
  if (status.ok()) return;
  try {
    WriteFailure(group_->store(), options_, status);
  } catch (const std::exception&) {
    // Rank 0's store is gone: there is no one left to tell.
  }
}

std::optional<absl::Status> Gang::PeerFailure() {
  try {
    return ReadFailure(group_->store(), options_);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

absl::StatusOr<std::unique_ptr<Gang>> Gang::Join(const GangOptions& options) {
  if (options.world_size < 2 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", options.rank, " of ", options.world_size, " is not a multi-worker rank"));
  }
  const std::string where = Where(options);
  absl::StatusOr<c10::intrusive_ptr<c10d::TCPStore>> reached = ReachStore(options);
  if (!reached.ok()) return reached.status();
  c10::intrusive_ptr<c10d::TCPStore> store = *std::move(reached);
  try {
    if (absl::Status all = AwaitRanks(*store, options); !all.ok()) return all;
    std::unique_ptr<Group> group;
    std::string backend = "gloo";
#ifdef FT_HAVE_NCCL
    if (options.device.is_cuda()) {
      auto nccl = c10d::ProcessGroupNCCL::Options::create();
      nccl->timeout = options.timeout;
      group = std::make_unique<GroupOf<c10d::ProcessGroupNCCL>>(
          store, c10::make_intrusive<c10d::ProcessGroupNCCL>(store, options.rank, options.world_size, nccl));
      backend = "nccl";
    }
#endif
    if (group == nullptr) {
      auto gloo = c10d::ProcessGroupGloo::Options::create(options.timeout);
      gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(options.host));
      // Gloo's own threads only move bytes; the summing is on the caller's.
      gloo->threads = 2;
      group = std::make_unique<GroupOf<c10d::ProcessGroupGloo>>(
          store, c10::make_intrusive<c10d::ProcessGroupGloo>(store, options.rank, options.world_size, gloo));
    }
    return std::unique_ptr<Gang>(new Gang(options, std::move(group), backend));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("rank ", options.rank, " of ", options.world_size,
                                               " could not join the group at ", where, " (this rank at ",
                                               options.host, "): ", FirstLine(e.what())));
  }
}

Gang::Gang(const GangOptions& options, std::unique_ptr<Group> group, std::string backend)
    : options_(options), group_(std::move(group)), backend_(std::move(backend)) {}

Gang::~Gang() = default;

void Gang::AllReduceSum(const std::vector<torch::Tensor>& tensors) { Bucketed(tensors, /*broadcast=*/false); }

void Gang::Broadcast(const std::vector<torch::Tensor>& tensors) { Bucketed(tensors, /*broadcast=*/true); }

void Gang::Bucketed(const std::vector<torch::Tensor>& tensors, bool broadcast) {
  // Buckets of one dtype and device, in the order given, so that every
  // rank packs the same buckets.
  struct Bucket {
    std::vector<torch::Tensor> members;
    int64_t bytes = 0;
    torch::Tensor flat;
  };
  std::vector<Bucket> buckets;
  std::map<std::pair<int, std::string>, size_t> open;  // (dtype, device) -> its bucket being filled
  for (const torch::Tensor& t : tensors) {
    if (!t.defined() || t.numel() == 0) continue;
    const auto key = std::make_pair(static_cast<int>(t.scalar_type()), t.device().str());
    auto it = open.find(key);
    if (it == open.end() || buckets[it->second].bytes >= options_.bucket_bytes) {
      buckets.emplace_back();
      it = open.insert_or_assign(key, buckets.size() - 1).first;
    }
    Bucket& b = buckets[it->second];
    b.members.push_back(t);
    b.bytes += static_cast<int64_t>(t.numel() * t.element_size());
  }
  const char* what = broadcast ? "broadcast" : "all-reduce";
  try {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    torch::NoGradGuard no_grad;
    for (Bucket& b : buckets) {
      if (b.members.size() == 1 && b.members[0].is_contiguous()) {
        b.flat = b.members[0];
      } else {
        std::vector<torch::Tensor> flat;
        flat.reserve(b.members.size());
        for (const auto& t : b.members) flat.push_back(t.reshape(-1));
        b.flat = torch::cat(flat);
      }
      std::vector<at::Tensor> one{b.flat};
      works.push_back(broadcast ? group_->Broadcast(one) : group_->AllReduce(one));
    }
    for (auto& w : works) w->wait(options_.timeout);
    for (Bucket& b : buckets) {
      if (b.flat.is_same(b.members[0])) continue;
      int64_t offset = 0;
      for (auto& t : b.members) {
        const int64_t n = t.numel();
        t.copy_(b.flat.slice(0, offset, offset + n).view_as(t));
        offset += n;
      }
    }
  } catch (const std::exception& e) {
    failed_.store(true);
    throw GangError(absl::StrCat("the ", what, " across ", options_.world_size, " workers failed at rank ",
                                 options_.rank, ": ", FirstLine(e.what())));
  }
}

}  // namespace ft::worker
