#include "common/datasets/archive.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/util/status.h"

namespace ft::datasets {
namespace fs = std::filesystem;
namespace {

constexpr size_t kBlockBytes = 64 * 1024;

struct ReadDeleter {
  void operator()(archive* a) const { archive_read_free(a); }
};
struct WriteDeleter {
  void operator()(archive* a) const { archive_write_free(a); }
};
struct EntryDeleter {
  void operator()(archive_entry* e) const { archive_entry_free(e); }
};

std::string ArchiveError(archive* a) {
  const char* e = archive_error_string(a);
  return e ? e : "unknown libarchive error";
}

absl::Status EntryError(const std::string& name, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("archive entry '", name, "': ", why));
}

std::string RandomSuffix() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return absl::StrFormat("%012x", rng() & 0xffffffffffffULL);
}

// An entry's path as components, with "." and empty ones dropped; refuses
// absolute paths and "..".
absl::StatusOr<std::vector<std::string>> SafeComponents(const std::string& name) {
  if (!name.empty() && name[0] == '/') return EntryError(name, "absolute paths are not allowed");
  std::vector<std::string> parts;
  for (absl::string_view c : absl::StrSplit(name, '/')) {
    if (c.empty() || c == ".") continue;
    if (c == "..") return EntryError(name, "'..' components are not allowed");
    parts.emplace_back(c);
  }
  return parts;
}

bool IsMacMetadata(const std::vector<std::string>& parts) {
  return !parts.empty() && (parts.front() == "__MACOSX" || absl::StartsWith(parts.back(), "._"));
}

// Refuses an entry that would be written through a symlink (or through a
// file): every existing parent must be a real folder. Missing parents are
// created when `create`, else refused.
absl::Status CheckParents(const fs::path& root, const std::vector<std::string>& parts,
                          const std::string& name, bool create) {
  fs::path p = root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    p /= parts[i];
    struct stat st;
    if (::lstat(p.c_str(), &st) == 0) {
      if (S_ISLNK(st.st_mode)) return EntryError(name, "is written through a symlink");
      if (!S_ISDIR(st.st_mode)) return EntryError(name, absl::StrCat("'", parts[i], "' is not a folder"));
      continue;
    }
    if (!create) return EntryError(name, absl::StrCat("'", parts[i], "' does not exist"));
    if (errno != ENOENT || ::mkdir(p.c_str(), 0755) != 0) {
      return EntryError(name, absl::StrCat("cannot create its folder: ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("write failed: ", std::strerror(errno)));
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

bool IsInside(const fs::path& p, const fs::path& root) {
  auto pi = p.begin();
  for (auto ri = root.begin(); ri != root.end(); ++ri, ++pi) {
    if (ri->empty()) continue;
    if (pi == p.end() || *pi != *ri) return false;
  }
  return true;
}

std::string FormatName(archive* a) {
  const int base = archive_format(a) & ARCHIVE_FORMAT_BASE_MASK;
  if (base == ARCHIVE_FORMAT_ZIP) return "zip";
  std::string name = base == ARCHIVE_FORMAT_TAR ? "tar" : absl::AsciiStrToLower(archive_format_name(a));
  switch (archive_filter_code(a, 0)) {
    case ARCHIVE_FILTER_GZIP: return name + ".gz";
    case ARCHIVE_FILTER_BZIP2: return name + ".bz2";
    case ARCHIVE_FILTER_XZ: return name + ".xz";
    case ARCHIVE_FILTER_ZSTD: return name + ".zst";
    default: return name;
  }
}

// One extraction into a private temporary folder.
class Extractor {
 public:
  Extractor(archive* a, fs::path root, const ExtractOptions& options)
      : a_(a), root_(std::move(root)), options_(options) {}

  absl::StatusOr<ExtractResult> Run() {
    std::vector<char> buffer(kBlockBytes);
    while (true) {
      archive_entry* entry = nullptr;
      const int r = archive_read_next_header(a_, &entry);
      if (r == ARCHIVE_EOF) break;
      if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
        if (result_.entries == 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("not a tar or zip archive (", ArchiveError(a_), ")"));
        }
        return absl::InvalidArgumentError(absl::StrCat("archive is corrupt after ", result_.entries,
                                                       " entries: ", ArchiveError(a_)));
      }
      if (result_.entries == 0) result_.archive_format = FormatName(a_);
      if (++result_.entries > options_.max_entries) {
        return absl::ResourceExhaustedError(
            absl::StrCat("archive has more than ", options_.max_entries, " entries (the extraction limit)"));
      }
      FT_RETURN_IF_ERROR(Entry(entry, &buffer));
    }
    if (result_.archive_format.empty()) result_.archive_format = FormatName(a_);
    return result_;
  }

  const std::vector<std::pair<std::string, fs::path>>& symlinks() const { return symlinks_; }

 private:
  absl::Status Entry(archive_entry* entry, std::vector<char>* buffer) {
    const char* raw = archive_entry_pathname(entry);
    if (raw == nullptr) raw = archive_entry_pathname_utf8(entry);
    if (raw == nullptr) return EntryError("?", "its name cannot be decoded");
    const std::string name = raw;
    FT_ASSIGN_OR_RETURN(std::vector<std::string> parts, SafeComponents(name));
    if (parts.empty() || IsMacMetadata(parts)) return absl::OkStatus();
    FT_RETURN_IF_ERROR(CheckParents(root_, parts, name, /*create=*/true));
    fs::path path = root_;
    for (const auto& p : parts) path /= p;

    if (const char* hardlink = archive_entry_hardlink(entry); hardlink != nullptr) {
      auto safe = SafeComponents(hardlink);
      if (!safe.ok()) return EntryError(name, absl::StrCat("hard link to '", hardlink, "' leaves the archive"));
      const std::vector<std::string>& target = *safe;
      fs::path tp = root_;
      for (const auto& p : target) tp /= p;
      struct stat st;
      if (target.empty() || !CheckParents(root_, target, name, /*create=*/false).ok() ||
          ::lstat(tp.c_str(), &st) != 0 ||
          !S_ISREG(st.st_mode)) {
        return EntryError(name, absl::StrCat("hard link to '", hardlink,
                                             "', which is not an earlier regular file of the archive"));
      }
      if (::link(tp.c_str(), path.c_str()) != 0) {
        return EntryError(name, absl::StrCat("cannot create hard link: ", std::strerror(errno)));
      }
      return absl::OkStatus();
    }

    switch (archive_entry_filetype(entry)) {
      case AE_IFDIR: {
        if (::mkdir(path.c_str(), 0755) == 0) return absl::OkStatus();
        struct stat st;
        if (errno == EEXIST && ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return absl::OkStatus();
        return EntryError(name, absl::StrCat("cannot create folder: ", std::strerror(errno)));
      }
      case AE_IFLNK: {
        const char* target = archive_entry_symlink(entry);
        if (target == nullptr || *target == '\0') return EntryError(name, "symlink without a target");
        if (target[0] == '/') {
          return EntryError(name, absl::StrCat("symlink to the absolute path '", target, "' is not allowed"));
        }
        // Lexically first, for a clear early error; chains of links are
        // checked on the real files once everything is extracted.
        int depth = static_cast<int>(parts.size()) - 1;
        for (absl::string_view c : absl::StrSplit(target, '/')) {
          if (c.empty() || c == ".") continue;
          depth += c == ".." ? -1 : 1;
          if (depth < 0) {
            return EntryError(name, absl::StrCat("symlink to '", target, "' points outside the archive"));
          }
        }
        if (::symlink(target, path.c_str()) != 0) {
          return EntryError(name, absl::StrCat("cannot create symlink: ", std::strerror(errno)));
        }
        symlinks_.emplace_back(name, path);
        return absl::OkStatus();
      }
      case AE_IFREG:
        return File(entry, name, path, buffer);
      case AE_IFCHR:
      case AE_IFBLK:
        return EntryError(name, "device files are not allowed");
      case AE_IFIFO:
        return EntryError(name, "FIFOs are not allowed");
      case AE_IFSOCK:
        return EntryError(name, "sockets are not allowed");
      default:
        return EntryError(name, "unsupported entry type");
    }
  }

  absl::Status File(archive_entry* entry, const std::string& name, const fs::path& path,
                    std::vector<char>* buffer) {
    // O_EXCL and O_NOFOLLOW: a second entry of the same name, or a symlink
    // planted at the name, is refused rather than written through.
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
      if (errno == EEXIST) return EntryError(name, "appears more than once");
      return EntryError(name, absl::StrCat("cannot create: ", std::strerror(errno)));
    }
    absl::Status status;
    while (status.ok()) {
      const la_ssize_t n = archive_read_data(a_, buffer->data(), buffer->size());
      if (n == 0) break;
      if (n < 0) {
        status = EntryError(name, absl::StrCat("cannot read its data: ", ArchiveError(a_)));
        break;
      }
      if (result_.bytes + n > options_.max_bytes) {
        status = absl::ResourceExhaustedError(absl::StrCat(
            "archive expands to more than ", options_.max_bytes, " bytes (the extraction limit), at entry '",
            name, "'"));
        break;
      }
      result_.bytes += n;
      status = WriteAll(fd, buffer->data(), static_cast<size_t>(n));
    }
    ::close(fd);
    return status;
  }

  archive* a_;
  fs::path root_;
  const ExtractOptions& options_;
  ExtractResult result_;
  std::vector<std::pair<std::string, fs::path>> symlinks_;  // entry name, path
};

// The folder the dataset is: `tmp`, or its only entry when that is a folder.
// The tree is kept whole (only the dataset's path changes), so relative
// links that climb to the top level still resolve after the move.
fs::path DatasetRoot(const fs::path& tmp, bool unwrap) {
  if (!unwrap) return tmp;
  std::error_code ec;
  fs::path only;
  int count = 0;
  for (const auto& e : fs::directory_iterator(tmp, ec)) {
    if (++count > 1) return tmp;
    only = e.path();
  }
  if (count == 1 && fs::is_directory(fs::symlink_status(only, ec))) return only;
  return tmp;
}

absl::StatusOr<ExtractResult> ExtractInto(const std::string& archive_path, const fs::path& tmp,
                                          const std::string& dest, const ExtractOptions& options) {
  std::unique_ptr<archive, ReadDeleter> a(archive_read_new());
  if (!a) return absl::InternalError("archive_read_new failed");
  archive_read_support_format_tar(a.get());
  archive_read_support_format_gnutar(a.get());
  archive_read_support_format_zip(a.get());
  archive_read_support_filter_gzip(a.get());
  archive_read_support_filter_bzip2(a.get());
  archive_read_support_filter_xz(a.get());
  archive_read_support_filter_zstd(a.get());
  if (archive_read_open_filename(a.get(), archive_path.c_str(), kBlockBytes) != ARCHIVE_OK) {
    struct stat st;
    if (::stat(archive_path.c_str(), &st) != 0) {
      return absl::NotFoundError(absl::StrCat("archive ", archive_path, " does not exist"));
    }
    return absl::InvalidArgumentError(absl::StrCat("not a tar or zip archive (", ArchiveError(a.get()), ")"));
  }
  Extractor extractor(a.get(), tmp, options);
  FT_ASSIGN_OR_RETURN(ExtractResult result, extractor.Run());

  std::error_code ec;
  const fs::path canonical_root = fs::canonical(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot resolve ", tmp.string(), ": ", ec.message()));
  for (const auto& [name, path] : extractor.symlinks()) {
    // The real target, through any chain of links; a link that stays inside
    // lexically can still leave through another link (`b -> .`, `c -> b/..`).
    const fs::path target = fs::canonical(path, ec);
    if (ec) return EntryError(name, absl::StrCat("symlink does not resolve inside the archive (", ec.message(), ")"));
    if (!IsInside(target, canonical_root)) return EntryError(name, "symlink points outside the archive");
  }
  const fs::path root = DatasetRoot(tmp, options.unwrap_single_directory);
  if (::rename(tmp.c_str(), dest.c_str()) != 0) {
    if (errno == EEXIST || errno == ENOTEMPTY) return absl::AlreadyExistsError(absl::StrCat(dest, " exists"));
    return absl::InternalError(absl::StrCat("cannot move the extracted archive to ", dest, ": ", std::strerror(errno)));
  }
  result.root = (fs::path(dest) / fs::relative(root, tmp)).lexically_normal().string();
  if (result.root.size() > 1 && result.root.back() == '/') result.root.pop_back();
  return result;
}

absl::Status AddFile(archive* a, const fs::path& path, const std::string& rel, int64_t size) {
  std::unique_ptr<archive_entry, EntryDeleter> e(archive_entry_new());
  archive_entry_set_pathname(e.get(), rel.c_str());
  archive_entry_set_filetype(e.get(), AE_IFREG);
  archive_entry_set_perm(e.get(), 0644);
  archive_entry_set_size(e.get(), size);
  archive_entry_set_mtime(e.get(), 0, 0);
  if (archive_write_header(a, e.get()) != ARCHIVE_OK) {
    return absl::InternalError(absl::StrCat("cannot pack ", rel, ": ", ArchiveError(a)));
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::PermissionDeniedError(absl::StrCat("cannot read ", path.string(), ": ", std::strerror(errno)));
  }
  std::vector<char> buffer(kBlockBytes);
  int64_t done = 0;
  absl::Status status;
  while (status.ok()) {
    const ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      status = absl::InternalError(absl::StrCat("cannot read ", path.string(), ": ", std::strerror(errno)));
    } else if (n == 0) {
      break;
    } else if (done + n > size) {
      status = absl::AbortedError(absl::StrCat(path.string(), " grew while it was being packed"));
    } else if (archive_write_data(a, buffer.data(), static_cast<size_t>(n)) != n) {
      status = absl::InternalError(absl::StrCat("cannot pack ", rel, ": ", ArchiveError(a)));
    } else {
      done += n;
    }
  }
  ::close(fd);
  if (status.ok() && done != size) {
    status = absl::AbortedError(absl::StrCat(path.string(), " shrank while it was being packed"));
  }
  return status;
}

absl::Status AddTree(archive* a, const fs::path& dir, const std::string& prefix,
                     std::set<std::pair<dev_t, ino_t>>* open_dirs) {
  std::error_code ec;
  std::vector<std::string> names;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    names.push_back(it->path().filename().string());
  }
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot list ", dir.string(), ": ", ec.message()));
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    const fs::path path = dir / n;
    const std::string rel = prefix.empty() ? n : absl::StrCat(prefix, "/", n);
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(path.string(), ": broken link or unreadable (",
                                                     std::strerror(errno), ")"));
    }
    if (S_ISDIR(st.st_mode)) {
      const auto key = std::make_pair(st.st_dev, st.st_ino);
      if (open_dirs->count(key)) {
        return absl::InvalidArgumentError(absl::StrCat(path.string(), ": symlink loop"));
      }
      std::unique_ptr<archive_entry, EntryDeleter> e(archive_entry_new());
      archive_entry_set_pathname(e.get(), (rel + "/").c_str());
      archive_entry_set_filetype(e.get(), AE_IFDIR);
      archive_entry_set_perm(e.get(), 0755);
      archive_entry_set_mtime(e.get(), 0, 0);
      if (archive_write_header(a, e.get()) != ARCHIVE_OK) {
        return absl::InternalError(absl::StrCat("cannot pack ", rel, ": ", ArchiveError(a)));
      }
      open_dirs->insert(key);
      FT_RETURN_IF_ERROR(AddTree(a, path, rel, open_dirs));
      open_dirs->erase(key);
    } else if (S_ISREG(st.st_mode)) {
      FT_RETURN_IF_ERROR(AddFile(a, path, rel, st.st_size));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(path.string(), ": not a file or folder (special files cannot be packed)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ExtractResult> ExtractArchive(const std::string& archive_path, const std::string& dest,
                                             const ExtractOptions& options) {
  std::error_code ec;
  const fs::path dest_path(dest);
  if (fs::exists(fs::symlink_status(dest_path, ec))) return absl::AlreadyExistsError(absl::StrCat(dest, " exists"));
  fs::create_directories(dest_path.parent_path(), ec);
  // A sibling, so that the final rename stays on one file system; hidden, so
  // that listings of the parent skip it.
  const fs::path tmp = dest_path.parent_path() /
                       absl::StrCat(".", dest_path.filename().string(), ".part-", RandomSuffix());
  if (::mkdir(tmp.c_str(), 0755) != 0) {
    return absl::InternalError(absl::StrCat("cannot create ", tmp.string(), ": ", std::strerror(errno)));
  }
  auto result = ExtractInto(archive_path, tmp, dest, options);
  fs::remove_all(tmp, ec);
  return result;
}

absl::Status PackDirectory(const std::string& dir, const std::string& out_path) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return absl::NotFoundError(absl::StrCat(dir, " is not a folder"));
  std::unique_ptr<archive, WriteDeleter> a(archive_write_new());
  if (!a) return absl::InternalError("archive_write_new failed");
  archive_write_set_format_pax_restricted(a.get());
  if (archive_write_open_filename(a.get(), out_path.c_str()) != ARCHIVE_OK) {
    return absl::PermissionDeniedError(absl::StrCat("cannot write ", out_path, ": ", ArchiveError(a.get())));
  }
  std::set<std::pair<dev_t, ino_t>> open_dirs;
  struct stat st;
  if (::stat(dir.c_str(), &st) == 0) open_dirs.insert({st.st_dev, st.st_ino});
  absl::Status status = AddTree(a.get(), fs::path(dir), "", &open_dirs);
  if (archive_write_close(a.get()) != ARCHIVE_OK && status.ok()) {
    status = absl::InternalError(absl::StrCat("cannot finish ", out_path, ": ", ArchiveError(a.get())));
  }
  return status;
}

bool HasArchiveExtension(const std::string& path) {
  const std::string lower = absl::AsciiStrToLower(fs::path(path).filename().string());
  for (const char* ext : {".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst", ".zip"}) {
    if (absl::EndsWith(lower, ext)) return true;
  }
  return false;
}

}  // namespace ft::datasets
