#ifndef FT_COMMON_DATASETS_ARCHIVE_H_
#define FT_COMMON_DATASETS_ARCHIVE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ft::datasets {

// Dataset archives with libarchive, shared by the server (uploads, file://
// archives), the worker (its dataset cache) and ftctl (packing a folder).
// Torch-free. The functions are thread-safe; concurrent extractions to the
// same `dest` are safe too (one wins, the others see ALREADY_EXISTS).

struct ExtractOptions {
  // Total bytes of file data written; past it, RESOURCE_EXHAUSTED. Counted as
  // the data is decompressed, never taken from the archive's headers.
  int64_t max_bytes = int64_t{64} << 30;
  // Entries of any kind (files, folders, links); past it, RESOURCE_EXHAUSTED.
  int64_t max_entries = 1000000;
  // When the archive holds a single top-level folder (as `tar czf x.tgz x/`
  // makes), the dataset is that folder (ExtractResult::root).
  bool unwrap_single_directory = true;
};

struct ExtractResult {
  // tar, tar.gz, tar.bz2, tar.xz, tar.zst or zip.
  std::string archive_format;
  int64_t entries = 0;
  int64_t bytes = 0;
  // The dataset's folder: `dest`, or `dest/<folder>` when unwrapped.
  std::string root;
};

// Extracts the tar or zip archive at `archive_path` (tar optionally gzip,
// bzip2, xz or zstd compressed) into `dest`, which must not exist. Entries
// are written into a temporary sibling folder that is renamed to `dest` only
// when everything succeeded, so `dest` is never partial.
//
// Refused, as INVALID_ARGUMENT naming the entry: absolute paths, `..`
// components, symlinks whose target is absolute or resolves outside the
// archive, hard links to anything but an earlier regular file of the
// archive, entries written through a symlink, device files, FIFOs and
// sockets, duplicate files. Also INVALID_ARGUMENT: not a tar or zip archive,
// or a corrupt one. RESOURCE_EXHAUSTED past `options`' caps. ALREADY_EXISTS
// when `dest` exists. Files are created 0644 and folders 0755 whatever the
// archive says. Entries under `__MACOSX/` and AppleDouble `._*` files (macOS
// metadata, never images) are skipped.
absl::StatusOr<ExtractResult> ExtractArchive(const std::string& archive_path, const std::string& dest,
                                             const ExtractOptions& options);

// Writes `dir`'s contents as a tar (pax) to `out_path`, paths relative to
// `dir`. Deterministic: sorted entries, zero times and owners, modes 0644 and
// 0755, so the same files always give the same bytes (and sha256). Symlinks
// are followed (their targets are archived), so a dataset of links to images
// elsewhere packs its images. NOT_FOUND when `dir` is not a folder,
// INVALID_ARGUMENT naming a special file or a broken link.
absl::Status PackDirectory(const std::string& dir, const std::string& out_path);

// True when the file name ends like an archive this module reads: .tar,
// .tar.gz, .tgz, .tar.bz2, .tar.xz, .tar.zst or .zip.
bool HasArchiveExtension(const std::string& path);

}  // namespace ft::datasets

#endif  // FT_COMMON_DATASETS_ARCHIVE_H_
