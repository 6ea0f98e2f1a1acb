#include "server/checkpoints/checkpoint_store.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/util/files.h"
#include "common/util/sha256.h"
#include "common/util/status.h"

namespace ft::server {
namespace fs = std::filesystem;
namespace {

constexpr char kData[] = ".ckpt";
constexpr char kRecord[] = ".record";

bool IsJobId(absl::string_view id) {
  return !id.empty() && id.size() <= 64 && id != "." && id != ".." &&
         std::all_of(id.begin(), id.end(), [](char c) { return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'; });
}

bool IsDigest(absl::string_view s) {
  return s.size() == 64 &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::string RecordText(const CheckpointInfo& c) {
  return absl::StrCat("number ", c.number, "\nepoch ", c.epoch, "\nstep ", c.step, "\nepoch_end ",
                      c.epoch_end ? 1 : 0, "\nsize ", c.size_bytes, "\nsha256 ", c.sha256, "\n");
}

absl::StatusOr<CheckpointInfo> ParseRecord(const std::string& text) {
  CheckpointInfo c;
  int fields = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits(' ', 1));
    int64_t v = 0;
    const bool num = absl::SimpleAtoi(kv.second, &v);
    if (kv.first == "number" && num) {
      c.number = v;
    } else if (kv.first == "epoch" && num) {
      c.epoch = static_cast<int32_t>(v);
    } else if (kv.first == "step" && num) {
      c.step = v;
    } else if (kv.first == "epoch_end" && num) {
      c.epoch_end = v != 0;
    } else if (kv.first == "size" && num) {
      c.size_bytes = v;
    } else if (kv.first == "sha256" && IsDigest(kv.second)) {
      c.sha256 = kv.second;
    } else {
      return absl::DataLossError(absl::StrCat("bad checkpoint record line '", line, "'"));
    }
    ++fields;
  }
  if (fields != 6) return absl::DataLossError("incomplete checkpoint record");
  return c;
}

// How this store's staging files begin (CheckpointStoreOptions::replica_id).
std::string StagingPrefix(const CheckpointStoreOptions& options) {
  return options.replica_id.empty() ? "upload-" : absl::StrCat("upload-", options.replica_id, "+");
}

}  // namespace

absl::StatusOr<std::unique_ptr<CheckpointStore>> CheckpointStore::Create(const CheckpointStoreOptions& options) {
  FT_RETURN_IF_ERROR(util::MakeDirs(options.root));
  // Staging files of interrupted uploads are never published.
  const std::string ours = StagingPrefix(options);
  std::error_code ec;
  for (const auto& job : fs::directory_iterator(options.root, ec)) {
    for (const auto& f : fs::directory_iterator(job.path(), ec)) {
      const std::string name = f.path().filename().string();
      if (absl::StartsWith(name, ours) && absl::EndsWith(name, ".part")) fs::remove(f.path(), ec);
    }
  }
  return std::unique_ptr<CheckpointStore>(new CheckpointStore(options));
}

std::string CheckpointStore::JobDir(const std::string& job_id) const {
  return (fs::path(options_.root) / job_id).string();
}

absl::Status CheckpointStore::Upload::Append(absl::string_view data) {
  if (sink_->bytes() + static_cast<int64_t>(data.size()) > info_.size_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("checkpoint upload sends more than the ", info_.size_bytes, " bytes its header declared"));
  }
  return sink_->Append(sink_->bytes(), data);
}

absl::StatusOr<std::unique_ptr<CheckpointStore::Upload>> CheckpointStore::BeginUpload(
    const std::string& job_id, int32_t epoch, int64_t step, bool epoch_end, int64_t size_bytes,
    const std::string& sha256) {
  if (!IsJobId(job_id)) return absl::InvalidArgumentError(absl::StrCat("job_id: bad job id '", job_id, "'"));
  if (!IsDigest(sha256)) return absl::InvalidArgumentError("sha256: must be 64 lower-case hex digits");
  if (size_bytes <= 0) return absl::InvalidArgumentError("size_bytes: must be positive");
  if (epoch < 1 || step < 0) return absl::InvalidArgumentError("epoch must be >= 1 and step >= 0");
  if (size_bytes > options_.max_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("checkpoint of ", size_bytes, " bytes is over the server's limit of ", options_.max_bytes));
  }
  const std::string dir = JobDir(job_id);
  FT_RETURN_IF_ERROR(util::MakeDirs(dir));
  CheckpointInfo info;
  info.epoch = epoch;
  info.step = step;
  info.epoch_end = epoch_end;
  info.size_bytes = size_bytes;
  info.sha256 = sha256;
  // Numbered at commit; staged under a name of its own until then.
  const std::string staging =
      absl::StrCat(dir, "/", StagingPrefix(options_), util::Sha256Hex(absl::StrCat(sha256, epoch, step)).substr(0, 16));
  FT_ASSIGN_OR_RETURN(auto sink, transfer::FileSink::Create(staging, absl::StrCat("checkpoint of job ", job_id)));
  return std::unique_ptr<Upload>(new Upload(job_id, std::move(info), std::move(sink), options_.max_bytes));
}

absl::StatusOr<CheckpointInfo> CheckpointStore::Commit(std::unique_ptr<Upload> upload) {
  FT_RETURN_IF_ERROR(upload->sink_->Commit(upload->info_.size_bytes, upload->info_.sha256));
  const std::string dir = JobDir(upload->job_id_);
  absl::MutexLock lock(&mu_);
  std::vector<CheckpointInfo> existing = List(upload->job_id_);
  CheckpointInfo info = upload->info_;
  info.number = existing.empty() ? 1 : existing.back().number + 1;
  info.path = absl::StrCat(dir, "/", info.number, kData);
  std::error_code ec;
  fs::rename(upload->sink_->path(), info.path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot store the checkpoint: ", ec.message()));
  // The record last: a checkpoint without one does not exist.
  FT_RETURN_IF_ERROR(util::WriteFileAtomic(absl::StrCat(dir, "/", info.number, kRecord), RecordText(info)));
  existing.push_back(info);
  for (size_t i = 0; i + static_cast<size_t>(std::max(1, options_.keep)) < existing.size(); ++i) {
    fs::remove(absl::StrCat(dir, "/", existing[i].number, kRecord), ec);
    fs::remove(existing[i].path, ec);
  }
  return info;
}

std::vector<CheckpointInfo> CheckpointStore::List(const std::string& job_id) {
  std::vector<CheckpointInfo> out;
  if (!IsJobId(job_id)) return out;
  std::error_code ec;
  for (const auto& f : fs::directory_iterator(JobDir(job_id), ec)) {
    if (f.path().extension() != kRecord) continue;
    auto text = util::ReadFile(f.path().string(), 4096);
    if (!text.ok()) continue;
    auto info = ParseRecord(*text);
    if (!info.ok() || absl::StrCat(info->number) != f.path().stem().string()) continue;
    info->path = absl::StrCat(JobDir(job_id), "/", info->number, kData);
    out.push_back(*std::move(info));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.number < b.number; });
  return out;
}

absl::StatusOr<CheckpointInfo> CheckpointStore::Newest(
    const std::string& job_id, const std::function<void(const CheckpointInfo&, const std::string&)>& skipped,
    int64_t before) {
  std::vector<CheckpointInfo> all;
  {
    absl::MutexLock lock(&mu_);
    all = List(job_id);
  }
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (before > 0 && it->number >= before) continue;
    auto digest = util::Sha256File(it->path);
    std::string why;
    if (!digest.ok()) {
      why = std::string(digest.status().message());
    } else if (*digest != it->sha256) {
      why = absl::StrCat("its sha256 is ", *digest, ", not the ", it->sha256, " it was stored with");
    } else {
      return *it;
    }
    if (skipped) skipped(*it, why);
  }
  return absl::NotFoundError(absl::StrCat("job ", job_id, " has no usable checkpoint"));
}

void CheckpointStore::DeleteJob(const std::string& job_id) {
  if (!IsJobId(job_id)) return;
  absl::MutexLock lock(&mu_);
  std::error_code ec;
  fs::remove_all(JobDir(job_id), ec);
}

}  // namespace ft::server
