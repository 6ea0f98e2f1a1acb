#include "worker/train/gang.h"

#include <exception>
#include <map>
#include <utility>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef FT_HAVE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "absl/status/status.h"
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

 private:
  // The store outlives the group, which uses it to connect.
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<PG> group_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Gang>> Gang::Join(const GangOptions& options) {
  if (options.world_size < 2 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", options.rank, " of ", options.world_size, " is not a multi-worker rank"));
  }
  const std::string where = absl::StrCat(options.master_host, ":", options.master_port);
  try {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(options.master_port);
    store_options.isServer = options.rank == 0;
    store_options.numWorkers = options.world_size;
    store_options.waitWorkers = true;
    store_options.timeout = options.timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(options.master_host, store_options);
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
