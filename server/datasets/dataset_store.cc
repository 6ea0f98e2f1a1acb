#include "server/datasets/dataset_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "google/protobuf/util/time_util.h"
#include "common/util/files.h"
#include "common/util/log.h"
#include "common/util/proto_json.h"
#include "common/util/status.h"
#include "common/util/tenant.h"
#include "common/datasets/layout.h"

namespace ft::datasets {
namespace fs = std::filesystem;
namespace {

constexpr char kIncoming[] = ".incoming";
constexpr char kNames[] = "names";
constexpr char kOwnerFile[] = "replica";  // in a pending dir: the replica extracting it, when replicas share root
constexpr char kPending[] = "pending-";  // <root>/pending-<digest>/{archive,format}: uploads being extracted
constexpr char kFormatFile[] = "format";
constexpr char kArchive[] = "archive";
constexpr char kData[] = "data";
constexpr char kRecord[] = "dataset.json";
constexpr char kRootFile[] = "root";      // the dataset folder, relative to the digest's folder
constexpr char kSourceFile[] = "source";  // a cached file:// archive's path
constexpr int kMaxNameLength = 64;
constexpr size_t kMaxRecordBytes = 1 << 20;

std::string RandomHex() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return absl::StrFormat("%012x", rng() & 0xffffffffffffULL);
}

bool IsDigest(absl::string_view s) {
  return s.size() == 64 &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// "tgz" and "tar.gz" are one format; "" means no hint.
absl::StatusOr<std::string> NormalizeFormatHint(const std::string& hint) {
  const std::string h = absl::AsciiStrToLower(hint);
  if (h.empty()) return h;
  if (h == "tgz") return std::string("tar.gz");
  for (const char* known : {"tar", "tar.gz", "tar.bz2", "tar.xz", "tar.zst", "zip"}) {
    if (h == known) return h;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("format: unknown archive format '", hint, "'; known: tar, tar.gz, zip (or leave it empty)"));
}

absl::Status Sync(int fd, const std::string& what) {
  if (::fsync(fd) != 0) return absl::InternalError(absl::StrCat("cannot sync ", what, ": ", std::strerror(errno)));
  return absl::OkStatus();
}

// Renames then deletes, so that a crash half-way leaves nothing under the
// old name; the trash lies in `incoming`, which Create() empties.
void RemoveTree(const fs::path& path, const fs::path& incoming) {
  std::error_code ec;
  const fs::path trash = incoming / absl::StrCat("deleted-", RandomHex());
  if (::rename(path.c_str(), trash.c_str()) == 0) {
    fs::remove_all(trash, ec);
  } else {
    fs::remove_all(path, ec);
  }
}

}  // namespace

bool IsValidDatasetName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

DatasetUpload::DatasetUpload(pb::DatasetUploadHeader header, std::string dir, int64_t max_bytes)
    : header_(std::move(header)), dir_(std::move(dir)), max_bytes_(max_bytes) {}

DatasetUpload::~DatasetUpload() {
  if (fd_ >= 0) ::close(fd_);
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

absl::Status DatasetUpload::Append(absl::string_view data) {
  const int64_t after = bytes_ + static_cast<int64_t>(data.size());
  if (after > max_bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "dataset upload exceeds the server's limit of ", max_bytes_, " bytes (--max-dataset-bytes)"));
  }
  if (after > header_.size_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("dataset upload sends more than the ", header_.size_bytes(),
                                                   " bytes its header declared"));
  }
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd_, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("cannot write dataset upload: ", std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  sha_.Update(data);
  bytes_ = after;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DatasetStore>> DatasetStore::Create(const DatasetStoreOptions& options) {
  const fs::path root(options.root);
  std::error_code ec;
  std::unique_ptr<util::Clock> owned;
  util::Clock* clock = options.clock;
  if (clock == nullptr) {
    owned = std::make_unique<util::RealClock>();
    clock = owned.get();
  }
  std::unique_ptr<DatasetStore> store(new DatasetStore(options, clock, std::move(owned)));
  const bool shared = !options.replica_id.empty();
  const fs::path incoming = store->IncomingDir();
  // Interrupted uploads, extractions and deletes are never published. With
  // replicas sharing the folders, only this one's: the others' are in use.
  for (const fs::path& dir : {root, fs::path(options.cache_root)}) {
    FT_RETURN_IF_ERROR(util::MakeDirs(dir.string()));
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      const bool ours = !shared || e.path() == incoming || absl::StartsWith(name, store->StagePrefix());
      if (name[0] == '.' && ours) fs::remove_all(e.path(), ec);
    }
  }
  FT_RETURN_IF_ERROR(util::MakeDirs(incoming.string()));
  FT_RETURN_IF_ERROR(util::MakeDirs((root / kNames).string()));
  // A crash between unbinding a name and deleting its digest leaves a digest
  // no name refers to.
  auto datasets = store->List("");
  if (!datasets.ok()) return datasets.status();
  std::set<std::string> referenced;
  for (const auto& d : *datasets) referenced.insert(d.sha256());
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (IsDigest(name) && !referenced.count(name)) RemoveTree(e.path(), incoming);
  }
  // Extractions a restart interrupted start again; their archives wait in
  // pending/. An EXTRACTING record without one cannot finish.
  std::set<std::string> resumed;
  for (const auto& d : *datasets) {
    if (d.state() != pb::DATASET_EXTRACTING || resumed.count(d.sha256())) continue;
    const fs::path pending = store->PendingDir(d.sha256());
    if (fs::is_regular_file(pending / kArchive, ec)) {
      // Another live replica's extraction is that replica's to finish (or
      // to resume when it restarts): two would race for the archive.
      const std::string owner = util::ReadFile((pending / kOwnerFile).string(), 256).value_or("");
      if (shared && !owner.empty() && owner != options.replica_id) continue;
      resumed.insert(d.sha256());
      store->ScheduleExtract(d.sha256());
    } else {
      absl::MutexLock lock(&store->mu_);
      // Looked at again: another replica may have finished it meanwhile.
      auto now = store->ReadRecord(d.tenant(), d.name());
      if (!now.ok() || now->state() != pb::DATASET_EXTRACTING) continue;
      pb::Dataset failed = d;
      failed.set_state(pb::DATASET_FAILED);
      failed.set_error_code(static_cast<int>(absl::StatusCode::kAborted));
      failed.set_error("the server stopped during the extraction and the archive is gone; upload it again");
      FT_RETURN_IF_ERROR(store->WriteRecord(failed));
    }
  }
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    // Not with replicas: another one may be about to record what it parked.
    if (!shared && absl::StartsWith(name, kPending) && !resumed.count(name.substr(strlen(kPending)))) {
      RemoveTree(e.path(), incoming);
    }
  }
  return store;
}

DatasetStore::~DatasetStore() {
  // The extraction running now finishes; queued ones resume at the next start.
  extractor_->Shutdown(/*drain=*/false);
}

std::string DatasetStore::IncomingDir() const {
  const std::string name = options_.replica_id.empty() ? kIncoming : absl::StrCat(kIncoming, "-", options_.replica_id);
  return (fs::path(options_.root) / name).string();
}

std::string DatasetStore::StagePrefix() const {
  return options_.replica_id.empty() ? ".stage-" : absl::StrCat(".stage-", options_.replica_id, "+");
}

std::string DatasetStore::PendingDir(const std::string& digest) const {
  return (fs::path(options_.root) / absl::StrCat(kPending, digest)).string();
}

void DatasetStore::ScheduleExtract(const std::string& digest) {
  extractor_->TrySchedule([this, digest] { Extract(digest); });
}

void DatasetStore::Extract(const std::string& digest) {
  const fs::path pending = PendingDir(digest);
  std::string format;
  if (auto f = util::ReadFile((pending / kFormatFile).string(), 64); f.ok()) format = *f;
  std::error_code ec;
  const int64_t size = static_cast<int64_t>(fs::file_size(pending / kArchive, ec));
  absl::StatusOr<pb::Dataset> made = absl::UnknownError("not extracted");
  if (ec) {
    made = absl::InternalError(absl::StrCat("the uploaded archive is gone: ", ec.message()));
  } else if (fs::exists(fs::path(DigestDir(digest)) / kRecord, ec)) {
    auto stored = util::ReadFile((fs::path(DigestDir(digest)) / kRecord).string(), kMaxRecordBytes);
    pb::Dataset record;
    made = stored.ok() ? util::FromJson(*stored, &record) : stored.status();
    if (made.ok()) made = record;
  } else {
    made = Materialize((pending / kArchive).string(), options_.root, digest, size, format, "");
  }
  if (made.ok() && !format.empty() && format != made->archive_format()) {
    made = absl::InvalidArgumentError(
        absl::StrCat("format: the archive is ", made->archive_format(), ", not ", format));
  }
  absl::MutexLock lock(&mu_);
  bool named = false;
  for (pb::Dataset record : ReadAllRecords()) {
    if (record.sha256() != digest) continue;
    named = true;
    if (record.state() != pb::DATASET_EXTRACTING) continue;
    if (made.ok()) {
      pb::Dataset ready = *made;
      ready.set_name(record.name());
      ready.set_tenant(record.tenant());
      *ready.mutable_create_time() = record.create_time();
      ready.set_state(pb::DATASET_READY);
      record = ready;
    } else {
      record.set_state(pb::DATASET_FAILED);
      record.set_error_code(static_cast<int>(made.status().code()));
      record.set_error(std::string(made.status().message()));
    }
    if (auto s = WriteRecord(record); !s.ok()) {
      util::Log("warning", "finetuned", "cannot record an extracted dataset",
                {{"dataset", record.name()}, {"error", std::string(s.message())}});
    }
    util::Log(made.ok() ? "info" : "warning", "finetuned", "dataset extracted",
              {{"dataset", record.name()}, {"state", pb::DatasetState_Name(record.state())},
               {"error", record.error()}});
  }
  RemoveTree(pending, IncomingDir());
  // Deleted while it was being extracted, or it failed: nothing keeps it.
  if (!named || !made.ok()) {
    bool ready_elsewhere = false;
    for (const auto& r : ReadAllRecords()) ready_elsewhere |= r.sha256() == digest && r.state() == pb::DATASET_READY;
    if (!ready_elsewhere) RemoveTree(DigestDir(digest), IncomingDir());
  }
}

DatasetStore::DatasetStore(const DatasetStoreOptions& options, util::Clock* clock,
                           std::unique_ptr<util::Clock> owned)
    : options_(options), clock_(clock), owned_clock_(std::move(owned)) {
  util::ExecutorOptions eo;
  eo.name = "ft-extract";
  eo.threads = std::max(1, options.extract_threads);
  extractor_ = std::make_unique<util::Executor>(eo);
}

std::string DatasetStore::DigestDir(const std::string& digest) const {
  return (fs::path(options_.root) / digest).string();
}

absl::StatusOr<std::unique_ptr<DatasetUpload>> DatasetStore::BeginUpload(const std::string& tenant,
                                                                         const pb::DatasetUploadHeader& in) {
  pb::DatasetUploadHeader header = in;
  if (!IsValidDatasetName(header.name())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "name: must be 1 to 64 of A-Z a-z 0-9 . _ - (and not . or ..), got '", header.name(), "'"));
  }
  header.set_sha256(absl::AsciiStrToLower(header.sha256()));
  if (!IsDigest(header.sha256())) {
    return absl::InvalidArgumentError(
        absl::StrCat("sha256: must be 64 hex digits, got '", header.sha256(), "'"));
  }
  if (header.size_bytes() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("size_bytes: must be positive, got ", header.size_bytes()));
  }
  if (header.size_bytes() > options_.max_upload_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "dataset ", header.name(), " is ", header.size_bytes(), " bytes, over the server's limit of ",
        options_.max_upload_bytes, " bytes (--max-dataset-bytes)"));
  }
  FT_ASSIGN_OR_RETURN(std::string format, NormalizeFormatHint(header.format()));
  header.set_format(format);
  {
    absl::ReaderMutexLock lock(&mu_);
    auto existing = ReadRecord(tenant, header.name());
    if (existing.ok() && existing->sha256() != header.sha256() && existing->state() != pb::DATASET_FAILED) {
      return absl::AlreadyExistsError(absl::StrCat(
          "a dataset named ", header.name(), " already exists with other contents (sha256 ",
          existing->sha256(), "); delete it first or choose another name"));
    }
  }
  const std::string dir = (fs::path(IncomingDir()) / RandomHex()).string();
  FT_RETURN_IF_ERROR(util::MakeDirs(dir));
  std::unique_ptr<DatasetUpload> upload(new DatasetUpload(header, dir, options_.max_upload_bytes));
  upload->tenant_ = util::TenantOrDefault(tenant);
  upload->fd_ = ::open((fs::path(dir) / kArchive).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (upload->fd_ < 0) {
    return absl::InternalError(absl::StrCat("cannot create upload in ", dir, ": ", std::strerror(errno)));
  }
  return upload;
}

absl::StatusOr<pb::Dataset> DatasetStore::Materialize(const std::string& archive, const std::string& parent,
                                                      const std::string& digest, int64_t size,
                                                      const std::string& format_hint,
                                                      const std::string& source) {
  const fs::path stage = fs::path(parent) / absl::StrCat(StagePrefix(), RandomHex());
  FT_RETURN_IF_ERROR(util::MakeDirs(stage.string()));
  struct Cleanup {
    fs::path path;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  } cleanup{stage};

  const std::string data = (stage / kData).string();
  FT_ASSIGN_OR_RETURN(ExtractResult extracted, ExtractArchive(archive, data, options_.extract));
  if (!format_hint.empty() && format_hint != extracted.archive_format) {
    return absl::InvalidArgumentError(absl::StrCat("format: the archive is ", extracted.archive_format,
                                                   ", not ", format_hint));
  }
  auto layout = ScanDataset(extracted.root, LayoutOptions());
  if (!layout.ok()) {
    // The message names our staging folder; say "the archive" instead (the
    // sandbox's "outside the dataset's folder <root>" too).
    // "dataset <root> has ..." reads "it has ...".
    const std::string message = absl::StrReplaceAll(
        absl::StrReplaceAll(layout.status().message(), {{"dataset " + extracted.root + " ", "it "}}),
        {{extracted.root + "/", ""},
                                    {"the dataset's folder " + extracted.root, "the archive"},
                                    {extracted.root, "the archive"}});
    return absl::Status(layout.status().code(), absl::StrCat("the archive is not a usable dataset: ", message));
  }
  pb::Dataset record;
  record.set_sha256(digest);
  record.set_size_bytes(size);
  record.set_format(layout->format);
  record.set_num_classes(static_cast<int32_t>(layout->classes.size()));
  record.set_num_images(static_cast<int64_t>(layout->train.size() + layout->val.size() + layout->test.size()));
  for (const auto& c : layout->classes) record.add_classes(c);
  record.set_archive_format(extracted.archive_format);
  record.set_extracted_bytes(extracted.bytes);
  FT_RETURN_IF_ERROR(util::WriteFileAtomic((stage / kRecord).string(), util::ToJson(record)));
  FT_RETURN_IF_ERROR(util::WriteFileAtomic(
      (stage / kRootFile).string(), fs::path(extracted.root).lexically_relative(stage).string()));
  if (!source.empty()) {
    FT_RETURN_IF_ERROR(util::WriteFileAtomic((stage / kSourceFile).string(), source));
  } else if (::rename(archive.c_str(), (stage / kArchive).c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot keep the uploaded archive: ", std::strerror(errno)));
  }
  const fs::path final_dir = fs::path(parent) / digest;
  if (::rename(stage.c_str(), final_dir.c_str()) != 0 && errno != EEXIST && errno != ENOTEMPTY) {
    return absl::InternalError(absl::StrCat("cannot publish ", final_dir.string(), ": ", std::strerror(errno)));
  }
  // Published by us, or by a concurrent extraction of the same bytes.
  return record;
}

absl::StatusOr<pb::Dataset> DatasetStore::Commit(std::unique_ptr<DatasetUpload> upload) {
  const pb::DatasetUploadHeader& header = upload->header_;
  if (upload->bytes_ != header.size_bytes()) {
    return absl::DataLossError(absl::StrCat("dataset upload has ", upload->bytes_, " bytes, but the header declared ",
                                            header.size_bytes()));
  }
  const std::string digest = upload->sha_.HexDigest();
  if (digest != header.sha256()) {
    return absl::DataLossError(absl::StrCat("dataset upload sha256 ", digest, " does not match the declared ",
                                            header.sha256()));
  }
  FT_RETURN_IF_ERROR(Sync(upload->fd_, "the dataset upload"));
  ::close(upload->fd_);
  upload->fd_ = -1;
  const std::string archive = (fs::path(upload->dir_) / kArchive).string();
  const fs::path record_path = fs::path(DigestDir(digest)) / kRecord;

  // Binding the name happens under mu_, which Delete() and Extract() hold
  // too, so a name is never bound to a digest being deleted.
  absl::MutexLock lock(&mu_);
  auto existing = ReadRecord(upload->tenant_, header.name());
  if (existing.ok() && existing->state() != pb::DATASET_FAILED) {
    if (existing->sha256() == digest) return *existing;
    return absl::AlreadyExistsError(absl::StrCat(
        "a dataset named ", header.name(), " already exists with other contents (sha256 ", existing->sha256(),
        "); delete it first or choose another name"));
  }
  pb::Dataset record;
  std::error_code ec;
  if (auto stored = util::ReadFile(record_path.string(), kMaxRecordBytes); stored.ok()) {
    // These bytes are extracted already (under another name): ready at once.
    FT_RETURN_IF_ERROR(util::FromJson(*stored, &record));
    if (!header.format().empty() && header.format() != record.archive_format()) {
      return absl::InvalidArgumentError(absl::StrCat("format: the archive is ", record.archive_format(),
                                                     ", not ", header.format()));
    }
    record.set_state(pb::DATASET_READY);
  } else {
    // Park the archive under pending/ (one per digest; a concurrent upload of
    // the same bytes finds it there) and extract it in the pool.
    const fs::path pending = PendingDir(digest);
    if (!fs::exists(pending / kArchive, ec)) {
      const fs::path stage = fs::path(IncomingDir()) / absl::StrCat("pending-", RandomHex());
      FT_RETURN_IF_ERROR(util::MakeDirs(stage.string()));
      FT_RETURN_IF_ERROR(util::WriteFileAtomic((stage / kFormatFile).string(), header.format()));
      if (!options_.replica_id.empty()) {
        FT_RETURN_IF_ERROR(util::WriteFileAtomic((stage / kOwnerFile).string(), options_.replica_id));
      }
      if (::rename(archive.c_str(), (stage / kArchive).c_str()) != 0 || ::rename(stage.c_str(), pending.c_str()) != 0) {
        return absl::InternalError(absl::StrCat("cannot keep the uploaded archive: ", std::strerror(errno)));
      }
      ScheduleExtract(digest);
    }
    record.set_sha256(digest);
    record.set_size_bytes(upload->bytes_);
    record.set_archive_format(header.format());
    record.set_state(pb::DATASET_EXTRACTING);
  }
  record.set_name(header.name());
  record.set_tenant(upload->tenant_);
  *record.mutable_create_time() =
      google::protobuf::util::TimeUtil::MicrosecondsToTimestamp(absl::ToUnixMicros(clock_->Now()));
  FT_RETURN_IF_ERROR(WriteRecord(record));
  return record;
}

std::string DatasetStore::RecordPath(const std::string& tenant, const std::string& name) const {
  // The default tenant keeps the bare <name>.json it had before tenants, so
  // old data directories need no migration. Others are <tenant>@<name>.json:
  // dataset names have no '@', so the last one splits them unambiguously.
  const std::string t = util::TenantOrDefault(tenant);
  const std::string file = t == util::kDefaultTenant ? name : absl::StrCat(t, "@", name);
  return (fs::path(options_.root) / kNames / (file + ".json")).string();
}

absl::Status DatasetStore::WriteRecord(const pb::Dataset& record) {
  return util::WriteFileAtomic(RecordPath(record.tenant(), record.name()), util::ToJson(record));
}

std::vector<pb::Dataset> DatasetStore::ReadAllRecords() {
  std::vector<pb::Dataset> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(options_.root) / kNames, ec)) {
    if (e.path().extension() != ".json") continue;
    const std::string stem = e.path().stem().string();
    const size_t at = stem.rfind('@');
    auto record = at == std::string::npos ? ReadRecord(util::kDefaultTenant, stem)
                                          : ReadRecord(stem.substr(0, at), stem.substr(at + 1));
    if (record.ok()) out.push_back(*std::move(record));
  }
  return out;
}

absl::StatusOr<pb::Dataset> DatasetStore::ReadRecord(const std::string& tenant, const std::string& name) {
  if (!IsValidDatasetName(name)) {
    return absl::InvalidArgumentError(absl::StrCat("'", name, "' is not a valid dataset name"));
  }
  auto json = util::ReadFile(RecordPath(tenant, name), kMaxRecordBytes);
  if (!json.ok()) return absl::NotFoundError(absl::StrCat("no uploaded dataset named '", name, "'"));
  pb::Dataset record;
  FT_RETURN_IF_ERROR(util::FromJson(*json, &record));
  // Where the record lies says whose it is (old records carry no tenant).
  record.set_tenant(util::TenantOrDefault(tenant));
  // Records written before datasets had states were all ready.
  if (record.state() == pb::DATASET_STATE_UNSPECIFIED) record.set_state(pb::DATASET_READY);
  return record;
}

absl::StatusOr<pb::Dataset> DatasetStore::Get(const std::string& tenant, const std::string& name) {
  absl::ReaderMutexLock lock(&mu_);
  return ReadRecord(tenant, name);
}

int64_t DatasetStore::TenantBytes(const std::string& tenant) {
  auto all = List(tenant);
  if (!all.ok()) return 0;
  int64_t total = 0;
  for (const auto& d : *all) total += d.size_bytes();
  return total;
}

absl::StatusOr<std::vector<pb::Dataset>> DatasetStore::List(const std::string& tenant) {
  std::vector<pb::Dataset> out;
  {
    absl::ReaderMutexLock lock(&mu_);
    std::error_code ec;
    if (!fs::is_directory(fs::path(options_.root) / kNames, ec)) {
      return absl::InternalError(absl::StrCat("cannot list datasets in ", options_.root));
    }
    out = ReadAllRecords();
  }
  if (!tenant.empty()) {
    out.erase(std::remove_if(out.begin(), out.end(), [&](const pb::Dataset& d) { return d.tenant() != tenant; }),
              out.end());
  }
  std::sort(out.begin(), out.end(), [](const pb::Dataset& a, const pb::Dataset& b) {
    if (a.create_time().seconds() != b.create_time().seconds()) {
      return a.create_time().seconds() > b.create_time().seconds();
    }
    if (a.create_time().nanos() != b.create_time().nanos()) return a.create_time().nanos() > b.create_time().nanos();
    return a.name() < b.name();
  });
  return out;
}

absl::Status DatasetStore::Delete(const std::string& tenant, const std::string& name,
                                  const std::function<absl::Status(const pb::Dataset&)>& in_use) {
  absl::MutexLock lock(&mu_);
  FT_ASSIGN_OR_RETURN(pb::Dataset record, ReadRecord(tenant, name));
  if (in_use) FT_RETURN_IF_ERROR(in_use(record));
  std::error_code ec;
  if (!fs::remove(RecordPath(tenant, name), ec) || ec) {
    return absl::InternalError(absl::StrCat("cannot delete dataset ", name, ": ", ec.message()));
  }
  // Still named (in any tenant) by a record that holds files (a FAILED one
  // holds none).
  for (const auto& other : ReadAllRecords()) {
    if (other.sha256() == record.sha256() && other.state() != pb::DATASET_FAILED) return absl::OkStatus();
  }
  RemoveTree(DigestDir(record.sha256()), IncomingDir());
  return absl::OkStatus();
}

absl::StatusOr<std::string> DatasetStore::DataPath(const std::string& tenant, const std::string& name) {
  FT_ASSIGN_OR_RETURN(pb::Dataset record, Get(tenant, name));
  if (record.state() == pb::DATASET_EXTRACTING) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dataset ", name, " is still being extracted; submit when `ftctl datasets list` shows it READY"));
  }
  if (record.state() == pb::DATASET_FAILED) {
    // One refused by the sandbox stays PERMISSION_DENIED wherever it is
    // named, as a file:// path outside the roots is.
    if (record.error_code() == static_cast<int>(absl::StatusCode::kPermissionDenied)) {
      return absl::PermissionDeniedError(
          absl::StrCat("dataset ", name, " was refused: ", record.error(), "; delete it and upload another"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat("dataset ", name, " failed to extract: ", record.error(), "; delete it and upload again"));
  }
  const fs::path dir = DigestDir(record.sha256());
  FT_ASSIGN_OR_RETURN(std::string root, util::ReadFile((dir / kRootFile).string(), 4096));
  return (dir / root).lexically_normal().string();
}

absl::StatusOr<std::string> DatasetStore::ArchivePath(const std::string& digest) {
  if (!IsDigest(digest)) {
    return absl::InvalidArgumentError(absl::StrCat("digest: must be 64 lower-case hex digits, got '", digest, "'"));
  }
  std::error_code ec;
  const fs::path uploaded = fs::path(DigestDir(digest)) / kArchive;
  if (fs::is_regular_file(uploaded, ec)) return uploaded.string();
  auto source = util::ReadFile((fs::path(options_.cache_root) / digest / kSourceFile).string(), 1 << 16);
  if (source.ok() && fs::is_regular_file(*source, ec)) return *source;
  return absl::NotFoundError(absl::StrCat("no dataset archive with sha256 ", digest));
}

absl::StatusOr<DatasetLocation> DatasetStore::ExtractCached(const std::string& archive_path) {
  struct stat st;
  if (::stat(archive_path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("dataset archive ", archive_path, " does not exist"));
  }
  const auto key = std::make_tuple(archive_path, static_cast<int64_t>(st.st_size),
                                   static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
                                   static_cast<uint64_t>(st.st_ino));
  std::string digest;
  {
    absl::MutexLock lock(&digests_mu_);
    if (auto it = known_digests_.find(key); it != known_digests_.end()) digest = it->second;
  }
  if (digest.empty()) {
    FT_ASSIGN_OR_RETURN(digest, util::Sha256File(archive_path));
    absl::MutexLock lock(&digests_mu_);
    known_digests_[key] = digest;
  }
  const fs::path dir = fs::path(options_.cache_root) / digest;
  std::error_code ec;
  if (!fs::exists(dir / kRecord, ec)) {
    auto made = Materialize(archive_path, options_.cache_root, digest, static_cast<int64_t>(st.st_size), "",
                            archive_path);
    if (!made.ok()) {
      return absl::Status(made.status().code(),
                          absl::StrCat("dataset archive ", archive_path, ": ", made.status().message()));
    }
  }
  // A digest's source is where it was first seen; keep it pointing at a file
  // that exists, for FetchDataset.
  auto source = util::ReadFile((dir / kSourceFile).string(), 1 << 16);
  if (!source.ok() || !fs::is_regular_file(*source, ec)) {
    FT_RETURN_IF_ERROR(util::WriteFileAtomic((dir / kSourceFile).string(), archive_path));
  }
  FT_ASSIGN_OR_RETURN(std::string root, util::ReadFile((dir / kRootFile).string(), 4096));
  return DatasetLocation{(dir / root).lexically_normal().string(), digest};
}

absl::StatusOr<DatasetLocation> LocateDataset(const DatasetUri& uri, const std::vector<std::string>& roots,
                                              DatasetStore* store, const std::string& tenant) {
  if (!uri.dataset_name.empty()) {
    if (store == nullptr) {
      return absl::FailedPreconditionError("dataset_uri: this server does not keep uploaded datasets");
    }
    if (!IsValidDatasetName(uri.dataset_name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset_uri: '", uri.dataset_name, "' is not a dataset name (1 to 64 of A-Z a-z 0-9 . _ -)"));
    }
    auto record = store->Get(tenant, uri.dataset_name);
    if (absl::IsNotFound(record.status())) {
      return absl::NotFoundError(absl::StrCat("dataset_uri: no uploaded dataset named '", uri.dataset_name,
                                              "' (see ftctl datasets list)"));
    }
    if (!record.ok()) return record.status();
    FT_ASSIGN_OR_RETURN(std::string path, store->DataPath(tenant, uri.dataset_name));
    return DatasetLocation{path, record->sha256()};
  }
  FT_ASSIGN_OR_RETURN(std::string path, ResolveInside(uri.path, roots, "dataset"));
  std::error_code ec;
  if (fs::is_regular_file(path, ec) && HasArchiveExtension(path)) {
    if (store == nullptr) {
      return absl::FailedPreconditionError("dataset_uri: this server cannot extract dataset archives");
    }
    return store->ExtractCached(path);
  }
  return DatasetLocation{path, ""};
}

}  // namespace ft::datasets
