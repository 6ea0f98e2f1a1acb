#ifndef FT_CLIENT_CLIENT_H_
#define FT_CLIENT_CLIENT_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "finetune/v1/finetune.grpc.pb.h"

namespace ft::client {

namespace pb = ::finetune::v1;

// A small synchronous client of the FineTune API. Errors keep the server's
// canonical code and message; a server that cannot be reached is UNAVAILABLE.
// Thread-compatible.
class Client {
 public:
  // Plaintext, no token.
  explicit Client(const std::string& address);
  // Over `channel` (common/channel: TLS and a token).
  explicit Client(std::shared_ptr<grpc::Channel> channel);

  absl::StatusOr<pb::Job> Submit(const pb::JobSpec& spec, const std::string& request_id);
  absl::StatusOr<pb::Job> Get(const std::string& job_id);
  // An empty `tenant`: what the server shows by default (an admin: all).
  absl::StatusOr<std::vector<pb::Job>> List(int limit, const std::string& tenant);
  absl::StatusOr<pb::Job> Cancel(const std::string& job_id);
  // Calls on_event for each event until the stream ends (after the terminal
  // event), then returns the final job. A server lost mid-watch is waited
  // for, up to 10 minutes, and the watch resumes from the next sequence: no
  // event is missed or repeated.
  absl::StatusOr<pb::Job> Watch(const std::string& job_id, int64_t from_sequence,
                                const std::function<void(const pb::JobEvent&)>& on_event);
  absl::StatusOr<std::vector<pb::Model>> ListModels(const std::string& tenant);
  absl::StatusOr<pb::Model> GetModel(const std::string& model_id);
  absl::Status DeleteModel(const std::string& model_id);
  // Writes the model's files into `dir` (created if needed), verifying each
  // file's sha256 (DATA_LOSS on mismatch). Returns the paths written.
  absl::StatusOr<std::vector<std::string>> DownloadModel(const std::string& model_id,
                                                         const std::string& dir);
  absl::StatusOr<pb::ValidationReport> Validate(const pb::JobSpec& spec);
  // Reads the image files and asks the server for their top-k classes.
  absl::StatusOr<pb::PredictResponse> Predict(const std::string& model_id, const std::vector<std::string>& files,
                                              int top_k);
  // Uploads the tar or zip archive at `archive_path` as dataset `name`
  // (client/client_datasets.cc). The server checks the bytes against
  // `sha256`, or the file's own digest when it is empty; `format` (tar,
  // tar.gz, zip) is an optional hint. The server answers once the bytes are
  // checked, while it extracts them (EXTRACTING); this call then waits until
  // the dataset is READY, and returns a FAILED extraction as its status
  // (e.g. INVALID_ARGUMENT naming an unsafe entry).
  absl::StatusOr<pb::Dataset> UploadDataset(const std::string& archive_path, const std::string& name,
                                            const std::string& sha256, const std::string& format);
  // `tenant`: admins only, another tenant's dataset (empty: the caller's).
  absl::StatusOr<pb::Dataset> GetDataset(const std::string& name, const std::string& tenant = "");
  absl::StatusOr<std::vector<pb::Dataset>> ListDatasets(const std::string& tenant);
  absl::Status DeleteDataset(const std::string& name, const std::string& tenant = "");
  // grpc.health.v1 check of the whole server.
  absl::Status Health();

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::FineTune::Stub> stub_;
};

}  // namespace ft::client

#endif  // FT_CLIENT_CLIENT_H_
