#ifndef FT_WORKER_AGENT_DATASET_CACHE_H_
#define FT_WORKER_AGENT_DATASET_CACHE_H_

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "finetune/v1/worker.grpc.pb.h"
#include "common/datasets/archive.h"

namespace ft::worker {

namespace pb = ::finetune::v1;

struct DatasetCacheOptions {
  // Extracted datasets by digest: <root>/<sha256>/. Usually <work-dir>/datasets.
  std::string root;
  // auto: use the server's extracted copy (ResolvedJob.dataset_path) when it
  // is readable here, as for local workers; else fetch. always: fetch and
  // cache, as a worker on another machine does.
  std::string fetch = "auto";
  // The server has checked the archive against its own caps already; these
  // only bound what a worker will write.
  datasets::ExtractOptions extract = {/*max_bytes=*/int64_t{1} << 40, /*max_entries=*/100000000,
                                      /*unwrap_single_directory=*/true};
};

// Makes a job's dataset readable on this worker. Datasets with a digest
// (dataset:// and file:// archives) are fetched once over
// WorkerGateway.FetchDataset, checked against their sha256, extracted with
// the server's safe extractor and kept by digest, so the next job on the
// same data reuses them. Safe for several workers sharing one root: each
// extracts into a private folder and publishes it with a rename. Not
// evicted: delete <root> to reclaim the space.
class DatasetCache {
 public:
  using Log = std::function<void(const std::string& message)>;
  using Cancelled = std::function<bool()>;

  // `stub` is not owned and must outlive the cache.
  DatasetCache(DatasetCacheOptions options, pb::WorkerGateway::Stub* stub);

  // Returns `job` with dataset_path set to a folder this worker can read,
  // telling `log` which copy it used. Errors: DATA_LOSS when the archive
  // arrives corrupted, CANCELLED when `cancelled` turned true during the
  // fetch, the server's status (e.g. NOT_FOUND for a deleted dataset), and
  // the extractor's.
  absl::StatusOr<pb::ResolvedJob> Prepare(const pb::ResolvedJob& job, const Log& log,
                                          const Cancelled& cancelled);

 private:
  absl::Status Fetch(const std::string& digest, const std::string& archive_path, const Cancelled& cancelled,
                     int64_t* bytes);

  DatasetCacheOptions options_;
  pb::WorkerGateway::Stub* stub_;
};

}  // namespace ft::worker

#endif  // FT_WORKER_AGENT_DATASET_CACHE_H_
