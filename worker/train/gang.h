// The ranks of one multi-worker job (JobSpec.workers > 1) as a c10d
// process group: PyTorch's own rendezvous (TCPStore, opened by rank 0) and
// collectives (ProcessGroupGloo on CPU; ProcessGroupNCCL on CUDA where the
// LibTorch build has it, else Gloo there too). The epoch loop averages
// gradients through it (EpochLoop, "Data parallel").
#ifndef FT_WORKER_TRAIN_GANG_H_
#define FT_WORKER_TRAIN_GANG_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ft::worker {

struct GangOptions {
  int rank = 0;
  int world_size = 1;
  // Rank 0's TCPStore, where every rank meets: rank 0 listens on
  // master_port (on every address), the others connect to it.
  std::string master_host;
  int master_port = 0;
  // This rank's own address, which its peers reach it at (Gloo binds its
  // connections there): the worker's --c10d-host.
  std::string host = "127.0.0.1";
  // How long joining, and then any one collective, may wait for the other
  // ranks before the gang counts as broken. A rank that dies closes its
  // connections, and its peers' collectives fail at once.
  std::chrono::milliseconds timeout = std::chrono::minutes(10);
  torch::Device device = torch::kCPU;
  // Gradients are summed in buckets of about this many bytes, one
  // collective each, all in flight at once.
  int64_t bucket_bytes = int64_t{25} << 20;
  // Names this group's keys in the store (the lease and its attempt), so
  // that a late rank of an earlier group on the same port is not taken for
  // one of this group.
  std::string key_prefix;
  // This rank's worker, named in the failure it reports.
  std::string worker_id;
  // Polled while waiting for rank 0's store and for the other ranks: true
  // gives up (CANCELLED), telling the others.
  std::function<bool()> stopped;
};

// A collective failed: a rank died, or did not answer within the timeout.
// The job's attempt is over on every rank (the server leases the whole
// gang again, from the newest checkpoint).
class GangError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

//
// Why a rank ended travels in rank 0's store: a rank that fails for its own
// reason (out of memory, a file it cannot read) writes its status there
// before it leaves, and a peer whose collective then fails reads it
// (PeerFailure), so that the job ends with that reason, and at once, not
// as "the all-reduce failed" or after the timeout.
class Gang {
 public:
  // Opens (rank 0) or reaches (the others) the TCPStore, waits until every
  // rank has reached it, and joins the process group. UNAVAILABLE, naming
  // the master, when that fails within options.timeout; a failure another
  // rank reported meanwhile (ReportBeforeJoining) as that rank's status;
  // CANCELLED when options.stopped.
  static absl::StatusOr<std::unique_ptr<Gang>> Join(const GangOptions& options);
  // For a rank that fails before it joins (it could not fetch the dataset,
  // say): reports `status` in rank 0's store, so that the ranks at the
  // rendezvous end with it. A rank other than 0 reaches the store, waiting
  // for it as Join does. Rank 0 opens it, and keeps it open until every
  // other rank has reached it (and a moment more, for the last to read
  // why), options.timeout has passed, or options.stopped: long, so it is
  // called off the job's thread. Best effort.
  static void ReportBeforeJoining(const GangOptions& options, const absl::Status& status);
  // For a rank other than 0 that finds, before it joins, that the job has
  // already ended on the server (its shared lease no longer holds): the
  // failure another rank reported in rank 0's store, most often rank 0's
  // own (ReportBeforeJoining), as that rank's status. Waits for the store,
  // and then for a report, until options.timeout; nullopt when none comes
  // (rank 0 died, or the job ended for another reason). Does not count this
  // rank in, so it never lets a group form.
  static std::optional<absl::Status> PeerFailureBeforeJoining(const GangOptions& options);
  ~Gang();
  Gang(const Gang&) = delete;
  Gang& operator=(const Gang&) = delete;

  int rank() const { return options_.rank; }
  int world_size() const { return options_.world_size; }
  // "gloo" or "nccl".
  const std::string& backend() const { return backend_; }

  // Sums every tensor across the ranks, in place. Every rank passes tensors
  // of the same shapes, dtypes and order. Packed into buckets of
  // options.bucket_bytes per dtype, whose collectives run concurrently.
  // Throws GangError.
  void AllReduceSum(const std::vector<torch::Tensor>& tensors);
  // Rank 0's values, in place, on every rank. Throws GangError.
  void Broadcast(const std::vector<torch::Tensor>& tensors);

  // Whether a collective has failed: the gang is broken, whatever a caller
  // made of the GangError (the TorchScript interpreter rethrows what an op
  // throws as its own error).
  bool failed() const { return failed_.load(); }

  // Tells the other ranks why this one ends: `status`, in rank 0's store.
  // Best effort: a store that is gone is ignored.
  void ReportFailure(const absl::Status& status);
  // The first failure another rank reported, as that rank's status, its
  // message prefixed with the rank and its worker; nullopt when none did
  // (it died, or the store is gone).
  std::optional<absl::Status> PeerFailure();

  // The backend's two collectives, on one tensor each, returning when done.
  class Group;

 private:
  Gang(const GangOptions& options, std::unique_ptr<Group> group, std::string backend);
  // Runs `collective` on `tensors` packed into buckets.
  void Bucketed(const std::vector<torch::Tensor>& tensors, bool broadcast);

  const GangOptions options_;
  std::unique_ptr<Group> group_;
  const std::string backend_;
  std::atomic<bool> failed_{false};
};

}  // namespace ft::worker

#endif  // FT_WORKER_TRAIN_GANG_H_
