#include "worker/agent/dataset_cache.h"

#include <algorithm>
#include <filesystem>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/grpc_status/grpc_status.h"
#include "common/transfer/transfer.h"
#include "grpcpp/grpcpp.h"
#include "common/util/files.h"
#include "common/util/sha256.h"
#include "common/util/status.h"

namespace ft::worker {
namespace fs = std::filesystem;
namespace {

constexpr char kRootFile[] = "root";  // the dataset folder, relative to the digest's folder

std::string RandomHex() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return absl::StrFormat("%012x", rng() & 0xffffffffffffULL);
}

bool IsDigest(const std::string& s) {
  return s.size() == 64 &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// The server keeps an archive's extracted copy under a folder named by its
// digest (<...>/<digest>/data...); a path without it is not that copy.
bool IsServerCopy(const std::string& path, const std::string& digest) {
  std::error_code ec;
  if (path.empty() || !fs::is_directory(path, ec)) return false;
  for (const auto& part : fs::path(path)) {
    if (part == digest) return true;
  }
  return false;
}

}  // namespace

DatasetCache::DatasetCache(DatasetCacheOptions options, pb::WorkerGateway::Stub* stub)
    : options_(std::move(options)), stub_(stub) {}

absl::StatusOr<pb::ResolvedJob> DatasetCache::Prepare(const pb::ResolvedJob& job, const Log& log,
                                                      const Cancelled& cancelled) {
  const std::string& digest = job.dataset_digest();
  if (digest.empty()) return job;
  if (!IsDigest(digest)) return absl::InvalidArgumentError(absl::StrCat("bad dataset digest '", digest, "'"));
  const std::string short_digest = digest.substr(0, 12);
  pb::ResolvedJob out = job;
  if (options_.fetch == "auto" && IsServerCopy(job.dataset_path(), digest)) {
    log(absl::StrCat("dataset ", short_digest, ": using the server's copy at ", job.dataset_path()));
    return out;
  }
  const fs::path dir = fs::path(options_.root) / digest;
  if (auto root = util::ReadFile((dir / kRootFile).string(), 4096); root.ok()) {
    out.set_dataset_path((dir / *root).lexically_normal().string());
    log(absl::StrCat("dataset ", short_digest, ": using the cached copy in ", dir.string()));
    return out;
  }

  FT_RETURN_IF_ERROR(util::MakeDirs(options_.root));
  const std::string suffix = RandomHex();
  const fs::path archive = fs::path(options_.root) / absl::StrCat(".fetch-", suffix);
  const fs::path stage = fs::path(options_.root) / absl::StrCat(".stage-", suffix);
  struct Cleanup {
    fs::path archive, stage;
    ~Cleanup() {
      std::error_code ec;
      fs::remove(archive, ec);
      fs::remove_all(stage, ec);
    }
  } cleanup{archive, stage};

  int64_t bytes = 0;
  FT_RETURN_IF_ERROR(Fetch(digest, archive.string(), cancelled, &bytes));
  FT_RETURN_IF_ERROR(util::MakeDirs(stage.string()));
  auto extracted = datasets::ExtractArchive(archive.string(), (stage / "data").string(), options_.extract);
  if (!extracted.ok()) {
    return absl::Status(extracted.status().code(),
                        absl::StrCat("dataset ", short_digest, ": ", extracted.status().message()));
  }
  FT_RETURN_IF_ERROR(util::WriteFileAtomic((stage / kRootFile).string(),
                                           fs::path(extracted->root).lexically_relative(stage).string()));
  std::error_code ec;
  fs::rename(stage, dir, ec);
  // Another worker sharing this root may have published it first: the same bytes.
  auto root = util::ReadFile((dir / kRootFile).string(), 4096);
  if (!root.ok()) {
    return absl::InternalError(absl::StrCat("cannot cache dataset ", short_digest, " in ", dir.string(), ": ",
                                            ec ? ec.message() : std::string(root.status().message())));
  }
  out.set_dataset_path((dir / *root).lexically_normal().string());
  log(absl::StrCat("dataset ", short_digest, ": fetched ", bytes, " bytes from the server, extracted ",
                   extracted->entries, " entries (", extracted->bytes, " bytes) into the cache at ", dir.string()));
  return out;
}

absl::Status DatasetCache::Fetch(const std::string& digest, const std::string& archive_path,
                                 const Cancelled& cancelled, int64_t* bytes) {
  grpc::ClientContext ctx;
  pb::FetchDatasetRequest request;
  request.set_digest(digest);
  auto reader = stub_->FetchDataset(&ctx, request);
  const std::string what = absl::StrCat("dataset ", digest.substr(0, 12));
  FT_ASSIGN_OR_RETURN(auto sink, transfer::FileSink::Create(archive_path, what));
  absl::Status received = transfer::ReceiveFile<pb::DatasetChunk>(
      *sink, [&](pb::DatasetChunk* c) { return reader->Read(c); },
      [&] { ctx.TryCancel(); },
      [&] {
        return FromGrpcStatus(reader->Finish(), absl::StrCat("fetching ", what));
      },
      cancelled, /*expected_sha256=*/digest);
  *bytes = sink->bytes();
  if (absl::IsCancelled(received)) return absl::CancelledError("cancelled while fetching the dataset");
  return received;
}

}  // namespace ft::worker
