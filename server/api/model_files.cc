#include "server/api/model_files.h"

#include <filesystem>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/util/sha256.h"
#include "common/util/status.h"

namespace ft::server {

absl::StatusOr<std::unique_ptr<ModelFileReader>> ModelFileReader::Open(
    FilesystemModelStore* store, const std::string& model_id, const std::vector<std::string>& files) {
  FT_ASSIGN_OR_RETURN(pb::Model model, store->Get(model_id));
  const std::vector<pb::ModelFile> stored = StoredModelFiles(model);
  std::vector<File> out;
  for (const auto& name : files) {
    FT_ASSIGN_OR_RETURN(std::string path, store->FilePath(model_id, name));
    std::error_code ec;
    File f{name, path, static_cast<int64_t>(std::filesystem::file_size(path, ec)), ""};
    if (ec) return absl::NotFoundError(absl::StrCat("model ", model_id, " has no ", name));
    // The digest recorded at upload, so that a file damaged since is caught
    // by the receiver; metadata.json of older records is hashed now.
    for (const pb::ModelFile& s : stored) {
      if (s.name() == name) f.sha256 = s.sha256();
    }
    if (f.sha256.empty()) {
      FT_ASSIGN_OR_RETURN(f.sha256, util::Sha256File(path));
    }
    out.push_back(std::move(f));
  }
  return std::unique_ptr<ModelFileReader>(new ModelFileReader(std::move(out)));
}

absl::StatusOr<std::unique_ptr<ModelFileReader>> ModelFileReader::OpenAll(FilesystemModelStore* store,
                                                                          const std::string& model_id) {
  FT_ASSIGN_OR_RETURN(pb::Model model, store->Get(model_id));
  std::vector<std::string> names;
  for (const pb::ModelFile& f : StoredModelFiles(model)) names.push_back(f.name());
  return Open(store, model_id, names);
}

absl::StatusOr<bool> ModelFileReader::Next(pb::ModelChunk* chunk) {
  while (index_ < files_.size()) {
    const File& f = files_[index_];
    if (source_ == nullptr) {
      auto source = transfer::FileSource::Open(f.path, f.sha256);
      if (!source.ok()) return absl::NotFoundError(absl::StrCat("cannot open ", f.name));
      source_ = *std::move(source);
    }
    int64_t offset = 0;
    std::string data;
    FT_ASSIGN_OR_RETURN(bool more, source_->Next(&offset, &data));
    if (!more) {
      source_.reset();
      ++index_;
      continue;
    }
    chunk->Clear();
    chunk->set_file(f.name);
    chunk->set_offset(offset);
    if (offset == 0) {
      chunk->set_total_size(source_->size());
      chunk->set_sha256(f.sha256);
    }
    *chunk->mutable_data() = std::move(data);
    return true;
  }
  return false;
}

}  // namespace ft::server
