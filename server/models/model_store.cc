#include "server/models/model_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/util/time_util.h"
#include "nlohmann/json.hpp"
#include "common/util/files.h"
#include "common/util/proto_json.h"
#include "common/util/sha256.h"
#include "common/util/status.h"
#include "common/util/tenant.h"

namespace ft::server {
namespace fs = std::filesystem;
namespace {

constexpr char kIncoming[] = ".incoming";

std::string IncomingName(const FilesystemModelStoreOptions& options) {
  return options.replica_id.empty() ? kIncoming : absl::StrCat(kIncoming, "-", options.replica_id);
}
constexpr char kModelJson[] = "model.json";

std::string RandomHex() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return absl::StrFormat("%012x", rng() & 0xffffffffffffULL);
}

bool IsModelFileName(const std::string& name) {
  return std::any_of(std::begin(kModelFileNames), std::end(kModelFileNames),
                     [&name](const char* known) { return name == known; });
}

int FileRank(const std::string& name) {
  const auto* it = std::find_if(std::begin(kModelFileNames), std::end(kModelFileNames),
                                [&name](const char* known) { return name == known; });
  return static_cast<int>(it - std::begin(kModelFileNames));
}

}  // namespace

std::vector<pb::ModelFile> StoredModelFiles(const pb::Model& model) {
  if (model.files_size() > 0) return {model.files().begin(), model.files().end()};
  std::vector<pb::ModelFile> files(2);
  files[0].set_name("metadata.json");
  files[1].set_name("model.pt");
  files[1].set_size_bytes(model.size_bytes());
  files[1].set_sha256(model.sha256());
  return files;
}

ModelUpload::ModelUpload(std::string dir, int64_t max_bytes)
    : dir_(std::move(dir)), max_bytes_(max_bytes) {}

ModelUpload::~ModelUpload() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
}

absl::Status ModelUpload::StartFile(const std::string& name, int64_t size_bytes, const std::string& sha256) {
  FT_RETURN_IF_ERROR(FinishFile());
  if (name == "metadata.json") {
    return absl::InvalidArgumentError("model file metadata.json travels in the upload's header, not as a file");
  }
  if (!IsModelFileName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("no model file may be named '", name, "' (model.pt, README.md or model.onnx)"));
  }
  if (std::any_of(done_.begin(), done_.end(), [&name](const pb::ModelFile& f) { return f.name() == name; })) {
    return absl::InvalidArgumentError(absl::StrCat("model file ", name, " was sent twice"));
  }
  if (size_bytes < 0) return absl::InvalidArgumentError(absl::StrCat("model file ", name, ": negative size"));
  const std::string part = absl::StrCat(dir_, "/", name, ".part");
  fd_ = ::open(part.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    return absl::InternalError(absl::StrCat("cannot create ", part, ": ", std::strerror(errno)));
  }
  current_.Clear();
  current_.set_name(name);
  current_.set_size_bytes(size_bytes);
  current_.set_sha256(sha256);
  current_bytes_ = 0;
  sha_ = std::make_unique<util::Sha256>();
  return absl::OkStatus();
}

absl::Status ModelUpload::FinishFile() {
  if (fd_ < 0) return absl::OkStatus();
  const std::string name = current_.name();
  if (current_bytes_ != current_.size_bytes()) {
    return absl::DataLossError(absl::StrCat("model upload: ", name, " has ", current_bytes_,
                                            " bytes, but its header declared ", current_.size_bytes()));
  }
  const std::string digest = sha_->HexDigest();
  if (digest != current_.sha256()) {
    return absl::DataLossError(absl::StrCat("model upload: ", name, " has sha256 ", digest,
                                            ", which does not match the declared ", current_.sha256()));
  }
  const bool synced = ::fsync(fd_) == 0;
  ::close(fd_);
  fd_ = -1;
  if (!synced) return absl::InternalError(absl::StrCat("cannot write model upload ", name, ": ", std::strerror(errno)));
  std::error_code ec;
  fs::rename(absl::StrCat(dir_, "/", name, ".part"), absl::StrCat(dir_, "/", name), ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot store model file ", name, ": ", ec.message()));
  done_.push_back(current_);
  return absl::OkStatus();
}

absl::Status ModelUpload::Append(absl::string_view data) {
  if (fd_ < 0) return absl::InvalidArgumentError("model upload: bytes before a file was started");
  if (bytes_ + static_cast<int64_t>(data.size()) > max_bytes_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("model upload exceeds the limit of ", max_bytes_, " bytes"));
  }
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd_, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("cannot write model upload: ", std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  sha_->Update(data);
  bytes_ += static_cast<int64_t>(data.size());
  current_bytes_ += static_cast<int64_t>(data.size());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<FilesystemModelStore>> FilesystemModelStore::Create(
    const FilesystemModelStoreOptions& options) {
  FT_RETURN_IF_ERROR(util::MakeDirs(options.root));
  // Leftovers of uploads interrupted by a crash are never published.
  std::error_code ec;
  fs::remove_all(fs::path(options.root) / IncomingName(options), ec);
  FT_RETURN_IF_ERROR(util::MakeDirs((fs::path(options.root) / IncomingName(options)).string()));
  std::unique_ptr<util::Clock> owned;
  util::Clock* clock = options.clock;
  if (clock == nullptr) {
    owned = std::make_unique<util::RealClock>();
    clock = owned.get();
  }
  return std::unique_ptr<FilesystemModelStore>(
      new FilesystemModelStore(options, clock, std::move(owned)));
}

FilesystemModelStore::FilesystemModelStore(const FilesystemModelStoreOptions& options,
                                           util::Clock* clock,
                                           std::unique_ptr<util::Clock> owned)
    : options_(options), clock_(clock), owned_clock_(std::move(owned)) {}

std::string FilesystemModelStore::IncomingDir() const {
  return (fs::path(options_.root) / IncomingName(options_)).string();
}

absl::StatusOr<std::unique_ptr<ModelUpload>> FilesystemModelStore::BeginUpload() {
  const std::string dir = (fs::path(IncomingDir()) / RandomHex()).string();
  FT_RETURN_IF_ERROR(util::MakeDirs(dir));
  return std::unique_ptr<ModelUpload>(new ModelUpload(dir, options_.max_model_bytes));
}

absl::StatusOr<pb::Model> FilesystemModelStore::Commit(std::unique_ptr<ModelUpload> upload,
                                                       const std::string& job_id,
                                                       const std::string& job_name,
                                                       const std::string& metadata_json,
                                                       const std::string& tenant) {
  FT_RETURN_IF_ERROR(upload->FinishFile());
  std::vector<pb::ModelFile> files = upload->done_;
  const auto pt =
      std::find_if(files.begin(), files.end(), [](const pb::ModelFile& f) { return f.name() == "model.pt"; });
  if (pt == files.end()) return absl::InvalidArgumentError("model upload has no model.pt");
  const std::string model_sha256 = pt->sha256();

  pb::Model model;
  nlohmann::json meta = nlohmann::json::parse(metadata_json, nullptr, /*allow_exceptions=*/false);
  if (meta.is_discarded() || !meta.is_object()) {
    return absl::InvalidArgumentError("model metadata.json is not a JSON object");
  }
  model.set_id(absl::StrCat("mdl-", RandomHex()));
  model.set_job_id(job_id);
  model.set_name(job_name);
  model.set_tenant(util::TenantOrDefault(tenant));
  model.set_sha256(model_sha256);
  *model.mutable_create_time() = google::protobuf::util::TimeUtil::MicrosecondsToTimestamp(
      absl::ToUnixMicros(clock_->Now()));
  if (meta.contains("backbone") && meta["backbone"].is_string()) {
    model.set_backbone(meta["backbone"].get<std::string>());
  }
  if (meta.contains("image_size") && meta["image_size"].is_number_integer()) {
    model.set_image_size(meta["image_size"].get<int>());
  }
  if (meta.contains("classes") && meta["classes"].is_array()) {
    for (const auto& c : meta["classes"]) {
      if (c.is_string()) model.add_classes(c.get<std::string>());
    }
  }
  if (meta.contains("metrics") && meta["metrics"].is_object()) {
    (void)util::FromJson(meta["metrics"].dump(), model.mutable_metrics());
  }
  meta["model_id"] = model.id();
  meta["job_id"] = job_id;
  const std::string metadata = meta.dump(2);
  FT_RETURN_IF_ERROR(util::WriteFileAtomic(upload->dir_ + "/metadata.json", metadata));
  pb::ModelFile metadata_file;
  metadata_file.set_name("metadata.json");
  metadata_file.set_size_bytes(static_cast<int64_t>(metadata.size()));
  metadata_file.set_sha256(util::Sha256Hex(metadata));
  files.push_back(metadata_file);
  std::sort(files.begin(), files.end(),
            [](const pb::ModelFile& a, const pb::ModelFile& b) { return FileRank(a.name()) < FileRank(b.name()); });
  int64_t size_bytes = 0;
  for (const pb::ModelFile& f : files) {
    size_bytes += f.size_bytes();
    *model.add_files() = f;
  }
  model.set_size_bytes(size_bytes);
  FT_RETURN_IF_ERROR(util::WriteFileAtomic(upload->dir_ + "/" + kModelJson, util::ToJson(model)));

  absl::MutexLock lock(&mu_);
  const fs::path dest = fs::path(options_.root) / model.id();
  std::error_code ec;
  fs::rename(upload->dir_, dest, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot publish model: ", ec.message()));
  upload->committed_ = true;
  return model;
}

absl::Status FilesystemModelStore::CheckId(const std::string& model_id) {
  if (model_id.empty() || model_id.size() > 64 ||
      !std::all_of(model_id.begin(), model_id.end(),
                   [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-'; }) ||
      model_id[0] == '.') {
    return absl::InvalidArgumentError(absl::StrCat("model_id: not a valid model id: '", model_id, "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<pb::Model> FilesystemModelStore::Get(const std::string& model_id) {
  FT_RETURN_IF_ERROR(CheckId(model_id));
  auto json = util::ReadFile((fs::path(options_.root) / model_id / kModelJson).string(), 1 << 20);
  if (!json.ok()) return absl::NotFoundError(absl::StrCat("no model with id ", model_id));
  pb::Model model;
  FT_RETURN_IF_ERROR(util::FromJson(*json, &model));
  model.set_tenant(util::TenantOrDefault(model.tenant()));
  return model;
}

absl::StatusOr<std::vector<pb::Model>> FilesystemModelStore::List(const std::string& tenant) {
  std::vector<pb::Model> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(options_.root, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name[0] == '.') continue;
    auto model = Get(name);
    if (model.ok() && (tenant.empty() || model->tenant() == tenant)) out.push_back(*std::move(model));
  }
  std::sort(out.begin(), out.end(), [](const pb::Model& a, const pb::Model& b) {
    return a.create_time().seconds() > b.create_time().seconds() ||
           (a.create_time().seconds() == b.create_time().seconds() &&
            a.create_time().nanos() > b.create_time().nanos());
  });
  return out;
}

absl::Status FilesystemModelStore::Delete(const std::string& model_id) {
  FT_RETURN_IF_ERROR(Get(model_id).status());
  absl::MutexLock lock(&mu_);
  std::error_code ec;
  // Rename first so that a concurrent reader sees the model either whole or gone.
  const fs::path doomed = fs::path(IncomingDir()) / absl::StrCat("deleted-", model_id, "-", RandomHex());
  fs::rename(fs::path(options_.root) / model_id, doomed, ec);
  // Another replica deleted it first.
  if (ec == std::errc::no_such_file_or_directory) return absl::NotFoundError(absl::StrCat("no model with id ", model_id));
  if (ec) return absl::InternalError(absl::StrCat("cannot delete model ", model_id, ": ", ec.message()));
  fs::remove_all(doomed, ec);
  return absl::OkStatus();
}

absl::StatusOr<std::string> FilesystemModelStore::FilePath(const std::string& model_id,
                                                           const std::string& file) {
  if (!IsModelFileName(file)) return absl::InvalidArgumentError(absl::StrCat("no model file named ", file));
  FT_RETURN_IF_ERROR(Get(model_id).status());
  return (fs::path(options_.root) / model_id / file).string();
}

int64_t FilesystemModelStore::TenantBytes(const std::string& tenant) {
  int64_t total = 0;
  auto models = List(tenant);
  if (!models.ok()) return 0;
  for (const auto& m : *models) total += m.size_bytes();
  return total;
}

int64_t FilesystemModelStore::TotalBytes() {
  int64_t total = 0;
  std::error_code ec;
  for (const auto& entry : fs::recursive_directory_iterator(options_.root, ec)) {
    if (entry.is_regular_file(ec)) total += static_cast<int64_t>(entry.file_size(ec));
  }
  return total;
}

}  // namespace ft::server
