#ifndef FT_SERVER_MODELS_MODEL_STORE_H_
#define FT_SERVER_MODELS_MODEL_STORE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "finetune/v1/finetune.pb.h"
#include "common/util/clock.h"
#include "common/util/sha256.h"

namespace ft::server {

namespace pb = ::finetune::v1;

// The files a stored model may have: metadata.json (written by the store
// from the upload's header), model.pt (required), README.md (the model
// card) and model.onnx. Downloads stream them in this order.
inline constexpr const char* kModelFileNames[] = {"metadata.json", "model.pt", "README.md", "model.onnx"};

// The model's files as its record lists them; a record stored before files
// were listed has metadata.json (sha256 unknown: empty) and model.pt.
std::vector<pb::ModelFile> StoredModelFiles(const pb::Model& model);

struct FilesystemModelStoreOptions {
  // Models live in <root>/<model_id>/: the files of kModelFileNames that
  // the model has, and model.json (its record).
  std::string root;
  // Not owned; defaults to the real clock.
  util::Clock* clock = nullptr;
  // Uploads larger than this are refused (RESOURCE_EXHAUSTED).
  int64_t max_model_bytes = int64_t{8} << 30;
  // Set when several server replicas share `root`: uploads in progress then
  // lie in <root>/.incoming-<replica_id>, which only this replica empties
  // at start (another replica's may be in use). Empty: <root>/.incoming.
  std::string replica_id = "";
};

// One model upload in progress, written under the store's incoming folder:
// its files one after another, each into "<name>.part" and renamed to its
// name once its size and sha256 match. Not thread-safe; owned by one upload
// stream. Abandoned uploads are deleted.
class ModelUpload {
 public:
  ~ModelUpload();
  // Ends the file before (DATA_LOSS unless it matched its declared size and
  // sha256) and starts file `name`: model.pt, README.md or model.onnx, each
  // at most once (INVALID_ARGUMENT otherwise, naming it).
  absl::Status StartFile(const std::string& name, int64_t size_bytes, const std::string& sha256);
  // Bytes of the current file. INVALID_ARGUMENT before StartFile;
  // RESOURCE_EXHAUSTED once all files together pass the store's limit.
  absl::Status Append(absl::string_view data);
  // All files so far.
  int64_t bytes() const { return bytes_; }

 private:
  friend class FilesystemModelStore;
  ModelUpload(std::string dir, int64_t max_bytes);
  absl::Status FinishFile();

  std::string dir_;
  int64_t max_bytes_;
  int64_t bytes_ = 0;
  // The file being written, and the files done (checked and renamed).
  pb::ModelFile current_;
  int64_t current_bytes_ = 0;
  int fd_ = -1;
  std::unique_ptr<util::Sha256> sha_;
  std::vector<pb::ModelFile> done_;
  bool committed_ = false;
};

// Trained models on the filesystem. A model becomes visible only once its
// upload has been checked against the declared size and sha256 and moved into
// place with a rename. Thread-safe.
class FilesystemModelStore {
 public:
  static absl::StatusOr<std::unique_ptr<FilesystemModelStore>> Create(
      const FilesystemModelStoreOptions& options);

  absl::StatusOr<std::unique_ptr<ModelUpload>> BeginUpload();
  // Ends the last file (DATA_LOSS unless it matched its size and sha256),
  // requires model.pt (INVALID_ARGUMENT), parses metadata.json
  // (INVALID_ARGUMENT when malformed), writes it, and publishes the model,
  // all its files at once, as the job's tenant's (empty: the default
  // tenant). The record lists every file with its size and sha256.
  absl::StatusOr<pb::Model> Commit(std::unique_ptr<ModelUpload> upload, const std::string& job_id,
                                   const std::string& job_name, const std::string& metadata_json,
                                   const std::string& tenant);

  // Any tenant's model: tenant checks are the caller's (the API layer, which
  // knows who asks). Records older than tenants read as the default tenant.
  absl::StatusOr<pb::Model> Get(const std::string& model_id);
  // Newest first; an empty `tenant` means every tenant.
  absl::StatusOr<std::vector<pb::Model>> List(const std::string& tenant);
  // Bytes of the tenant's stored models (its storage quota).
  int64_t TenantBytes(const std::string& tenant);
  absl::Status Delete(const std::string& model_id);
  // Path of one of the model's files (kModelFileNames): INVALID_ARGUMENT
  // for another name; the file may be absent (README.md and model.onnx of
  // older models).
  absl::StatusOr<std::string> FilePath(const std::string& model_id, const std::string& file);
  int64_t TotalBytes();

 private:
  FilesystemModelStore(const FilesystemModelStoreOptions& options, util::Clock* clock,
                       std::unique_ptr<util::Clock> owned);
  absl::Status CheckId(const std::string& model_id);
  // This store's folder for uploads in progress and deletes.
  std::string IncomingDir() const;

  FilesystemModelStoreOptions options_;
  util::Clock* clock_;
  std::unique_ptr<util::Clock> owned_clock_;
  absl::Mutex mu_;  // serialises publish and delete
};

}  // namespace ft::server

#endif  // FT_SERVER_MODELS_MODEL_STORE_H_
