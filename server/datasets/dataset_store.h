#ifndef FT_SERVER_DATASETS_DATASET_STORE_H_
#define FT_SERVER_DATASETS_DATASET_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "finetune/v1/finetune.pb.h"
#include "common/util/clock.h"
#include "common/util/executor.h"
#include "common/util/sha256.h"
#include "common/datasets/archive.h"
#include "server/datasets/resolver.h"

namespace ft::datasets {

namespace pb = ::finetune::v1;

struct DatasetStoreOptions {
  // Uploaded datasets: <root>/<sha256>/{archive,data/,dataset.json} and the
  // name index <root>/names/<name>.json. Usually <data-dir>/datasets-uploaded.
  std::string root;
  // file:// archives extracted at submit: <cache_root>/<sha256>/{data/,
  // dataset.json,source}. Usually <data-dir>/datasets-cache.
  std::string cache_root;
  // Uploads larger than this are RESOURCE_EXHAUSTED (--max-dataset-bytes).
  int64_t max_upload_bytes = int64_t{10} << 30;
  // Extraction caps for uploads and file:// archives (zip bombs).
  ExtractOptions extract;
  // Not owned; defaults to the real clock.
  util::Clock* clock = nullptr;
  // Uploads extracted at once, in the store's own pool.
  int extract_threads = 1;
  // Set when several server replicas share `root` and `cache_root`: this
  // replica's uploads in progress and staging folders carry its id, and
  // Create() cleans up only its own (another replica's may be in use), and
  // resumes only the extractions this replica started. Empty: a single
  // server, which cleans up and resumes everything.
  std::string replica_id = "";
};

// One upload in progress, written under the store's incoming folder. Not
// thread-safe; owned by one upload stream. Abandoned uploads are deleted.
class DatasetUpload {
 public:
  ~DatasetUpload();
  // RESOURCE_EXHAUSTED past the store's limit; INVALID_ARGUMENT past the
  // size the header declared.
  absl::Status Append(absl::string_view data);
  int64_t bytes() const { return bytes_; }

 private:
  friend class DatasetStore;
  DatasetUpload(pb::DatasetUploadHeader header, std::string dir, int64_t max_bytes);
  pb::DatasetUploadHeader header_;
  std::string tenant_;
  std::string dir_;
  int64_t max_bytes_;
  int64_t bytes_ = 0;
  int fd_ = -1;
  util::Sha256 sha_;
};

// Where a dataset URI's files are, for pre-flight and the ResolvedJob.
struct DatasetLocation {
  std::string path;    // a folder or a .csv manifest, as ScanDataset takes it
  std::string digest;  // sha256 of the archive, for dataset:// and file:// archives
};

// Uploaded datasets, content-addressed by the sha256 of their archive, and
// the cache of extracted file:// archives. Thread-safe.
//
// An upload takes time to become usable, so its record carries a state, as
// Triton's models do: Commit answers at once with EXTRACTING, the store's
// own pool extracts and validates it, and the record becomes READY, or
// FAILED with the reason. A restart resumes the extractions it interrupted.
//
// A name is bound to one digest: uploading the same bytes under a name again
// returns the existing record (so retries are safe); other bytes under a
// taken name are ALREADY_EXISTS (delete it first). Two names may share one
// digest; the files go when the last name does.
class DatasetStore {
 public:
  // Creates the folders, deletes interrupted uploads and digests no name
  // refers to (left by a crash during a delete).
  static absl::StatusOr<std::unique_ptr<DatasetStore>> Create(const DatasetStoreOptions& options);
  // The extraction running now finishes; queued ones resume at the next start.
  ~DatasetStore();

  // Checks the header: INVALID_ARGUMENT for a bad name, sha256 or format
  // hint; RESOURCE_EXHAUSTED when size_bytes is over the limit;
  // ALREADY_EXISTS when the name is bound to another digest in `tenant`.
  // Names are per tenant (empty: the default tenant); the bytes are shared
  // by digest across tenants, which is safe because nothing names a digest
  // but a record.
  absl::StatusOr<std::unique_ptr<DatasetUpload>> BeginUpload(const std::string& tenant,
                                                             const pb::DatasetUploadHeader& header);
  // Checks size and sha256 (DATA_LOSS on a mismatch), syncs the archive and
  // binds the name: READY at once when these bytes are already extracted,
  // else EXTRACTING while the pool extracts the archive. Extraction failures
  // (INVALID_ARGUMENT naming an unsafe entry, RESOURCE_EXHAUSTED past the
  // caps, ScanDataset's errors such as FAILED_PRECONDITION for no images)
  // end in FAILED with that code and message. Syncs the archive to disk, so
  // call it off latency-sensitive threads.
  absl::StatusOr<pb::Dataset> Commit(std::unique_ptr<DatasetUpload> upload);

  // Newest first; an empty `tenant` means every tenant.
  absl::StatusOr<std::vector<pb::Dataset>> List(const std::string& tenant);
  // NOT_FOUND for a name unknown in `tenant`, INVALID_ARGUMENT for a
  // malformed one.
  absl::StatusOr<pb::Dataset> Get(const std::string& tenant, const std::string& name);
  // `in_use` is called with the record under the store's lock; an error from
  // it (FAILED_PRECONDITION: a job uses it) stops the delete.
  absl::Status Delete(const std::string& tenant, const std::string& name,
                      const std::function<absl::Status(const pb::Dataset&)>& in_use);
  // Archive bytes of the tenant's uploads (its storage quota).
  int64_t TenantBytes(const std::string& tenant);

  // The extracted folder of a READY uploaded dataset (pre-flight, local
  // workers); FAILED_PRECONDITION while it is EXTRACTING or after it FAILED,
  // PERMISSION_DENIED after the sandbox refused it (a file outside it).
  absl::StatusOr<std::string> DataPath(const std::string& tenant, const std::string& name);
  // The archive to stream to a worker, uploaded or a file:// archive's
  // source: NOT_FOUND when the digest is neither; INVALID_ARGUMENT when
  // `digest` is not 64 hex digits.
  absl::StatusOr<std::string> ArchivePath(const std::string& digest);
  // Extracts a file:// archive (already inside the dataset roots) into the
  // cache, keyed by its sha256, once; later calls find it (the digest is
  // remembered by path, size, mtime and inode, so the file is hashed once).
  absl::StatusOr<DatasetLocation> ExtractCached(const std::string& archive_path);

 private:
  DatasetStore(const DatasetStoreOptions& options, util::Clock* clock, std::unique_ptr<util::Clock> owned);
  std::string DigestDir(const std::string& digest) const;
  absl::StatusOr<pb::Dataset> ReadRecord(const std::string& tenant, const std::string& name)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  std::string RecordPath(const std::string& tenant, const std::string& name) const;
  absl::Status WriteRecord(const pb::Dataset& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<pb::Dataset> ReadAllRecords() ABSL_SHARED_LOCKS_REQUIRED(mu_);
  std::string PendingDir(const std::string& digest) const;
  // This store's folder for uploads in progress and trash, under root.
  // Staging names end the replica id with '+', which ids never hold, so
  // that replica "a" never takes replica "a-b"'s for its own.
  std::string IncomingDir() const;
  // How this store's staging folders (in root and cache_root) begin.
  std::string StagePrefix() const;
  // Extracts an upload's pending archive and settles every EXTRACTING name
  // bound to `digest`: READY, or FAILED with the reason. On the pool.
  void Extract(const std::string& digest);
  void ScheduleExtract(const std::string& digest);
  // Extracts `archive` into `<parent>/<digest>` (if not there yet) and reads
  // its layout; returns the digest's record (without a name).
  absl::StatusOr<pb::Dataset> Materialize(const std::string& archive, const std::string& parent,
                                          const std::string& digest, int64_t size,
                                          const std::string& format_hint, const std::string& source);

  DatasetStoreOptions options_;
  util::Clock* clock_;
  std::unique_ptr<util::Clock> owned_clock_;
  absl::Mutex mu_;  // serialises the name index and deletes
  absl::Mutex digests_mu_;
  // (path, size, mtime ns, inode) of file:// archives -> sha256.
  std::map<std::tuple<std::string, int64_t, int64_t, uint64_t>, std::string> known_digests_
      ABSL_GUARDED_BY(digests_mu_);
  // Last: its threads use everything above, so it goes first.
  std::unique_ptr<util::Executor> extractor_;
};

// True for names uploads may take: [A-Za-z0-9._-]{1,64}, not "." or "..".
bool IsValidDatasetName(absl::string_view name);

// Finds a parsed dataset URI's files: dataset://NAME in `store` and `tenant`, file://
// paths inside `roots` (PERMISSION_DENIED outside), and file:// archives
// extracted through `store`'s cache. A null `store` leaves dataset:// and
// archives FAILED_PRECONDITION.
absl::StatusOr<DatasetLocation> LocateDataset(const DatasetUri& uri, const std::vector<std::string>& roots,
                                              DatasetStore* store, const std::string& tenant);

}  // namespace ft::datasets

#endif  // FT_SERVER_DATASETS_DATASET_STORE_H_
