#include "server/api/model_files.h"

#include <filesystem>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "proto/util/sha256.h"
#include "proto/util/status.h"

namespace ft::server {

absl::StatusOr<std::unique_ptr<ModelFileReader>> ModelFileReader::Open(
    FilesystemModelStore* store, const std::string& model_id, const std::vector<std::string>& files) {
  FT_ASSIGN_OR_RETURN(pb::Model model, store->Get(model_id));
  std::vector<File> out;
  for (const auto& name : files) {
    FT_ASSIGN_OR_RETURN(std::string path, store->FilePath(model_id, name));
    std::error_code ec;
    File f{name, path, static_cast<int64_t>(std::filesystem::file_size(path, ec)), ""};
    if (ec) return absl::NotFoundError(absl::StrCat("model ", model_id, " has no ", name));
    if (name == "model.pt") {
      f.sha256 = model.sha256();
    } else {
      FT_ASSIGN_OR_RETURN(f.sha256, util::Sha256File(path));
    }
    out.push_back(std::move(f));
  }
  return std::unique_ptr<ModelFileReader>(new ModelFileReader(std::move(out)));
}

absl::StatusOr<bool> ModelFileReader::Next(pb::ModelChunk* chunk) {
  while (index_ < files_.size()) {
    const File& f = files_[index_];
    if (!open_) {
      in_ = std::ifstream(f.path, std::ios::binary);
      if (!in_) return absl::NotFoundError(absl::StrCat("cannot open ", f.name));
      open_ = true;
      offset_ = 0;
    }
    chunk->Clear();
    chunk->set_file(f.name);
    chunk->set_offset(offset_);
    if (offset_ == 0) {
      chunk->set_total_size(f.size);
      chunk->set_sha256(f.sha256);
    }
    std::string* data = chunk->mutable_data();
    data->resize(kChunkBytes);
    in_.read(data->data(), static_cast<std::streamsize>(kChunkBytes));
    data->resize(static_cast<size_t>(in_.gcount()));
    offset_ += static_cast<int64_t>(data->size());
    const bool at_end = offset_ >= f.size || data->empty();
    if (at_end) {
      ++index_;
      open_ = false;
      in_.close();
      // An empty file still gets its one header chunk.
      if (data->empty() && offset_ > 0) continue;
    }
    return true;
  }
  return false;
}

}  // namespace ft::server
