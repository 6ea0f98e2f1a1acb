#ifndef FT_SERVER_API_MODEL_FILES_H_
#define FT_SERVER_API_MODEL_FILES_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/transfer/transfer.h"
#include "finetune/v1/finetune.pb.h"
#include "server/models/model_store.h"

namespace ft::server {

// Reads a stored model's files as a sequence of ModelChunks: each file's
// first chunk carries its total size and sha256. Not thread-safe.
class ModelFileReader {
 public:
  // The named files of the model. NOT_FOUND for an unknown model, or one
  // without one of the files.
  static absl::StatusOr<std::unique_ptr<ModelFileReader>> Open(FilesystemModelStore* store,
                                                               const std::string& model_id,
                                                               const std::vector<std::string>& files);
  // Every file the model has (StoredModelFiles: metadata.json first).
  static absl::StatusOr<std::unique_ptr<ModelFileReader>> OpenAll(FilesystemModelStore* store,
                                                                  const std::string& model_id);
  // Fills `chunk` and returns true, or returns false at the end.
  absl::StatusOr<bool> Next(pb::ModelChunk* chunk);

 private:
  struct File {
    std::string name;
    std::string path;
    int64_t size = 0;
    std::string sha256;
  };
  explicit ModelFileReader(std::vector<File> files) : files_(std::move(files)) {}
  std::vector<File> files_;
  size_t index_ = 0;
  std::unique_ptr<transfer::FileSource> source_;
};

}  // namespace ft::server

#endif  // FT_SERVER_API_MODEL_FILES_H_
