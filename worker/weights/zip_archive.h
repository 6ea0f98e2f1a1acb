// Internal to ft::weights: a strict reader of the zip archives torch.save
// writes (stored records, zip64 end records). The central directory is the
// truth; local headers only locate each record's data. Torch-free.
#ifndef FT_WORKER_WEIGHTS_ZIP_ARCHIVE_H_
#define FT_WORKER_WEIGHTS_ZIP_ARCHIVE_H_

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace ft::worker::weights_internal {

// One record of the archive, as the central directory describes it.
struct ZipEntry {
  std::string name;
  uint64_t header_offset = 0;
  uint64_t data_offset = 0;
  uint64_t size = 0;    // bytes in the file
  uint16_t method = 0;  // 0: stored, the only kind Contents reads
  uint32_t crc32 = 0;
  bool crc_checked = false;
};

// A zip archive over borrowed bytes, which must outlive it; only stored
// (uncompressed) records can be read. Open checks the whole directory: every
// record lies inside the file, before the central directory, and apart from
// every other.
class ZipArchive {
 public:
  // INVALID_ARGUMENT when `bytes` do not start like a zip, or use what is not
  // supported (encryption, several disks, over 100000 records);
  // DATA_LOSS when truncated or inconsistent. `what` starts every message.
  static absl::StatusOr<ZipArchive> Open(absl::string_view bytes, const std::string& what);

  // nullptr when there is no entry of that name.
  ZipEntry* Find(const std::string& name) {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : &entries_[it->second];
  }
  // The entry's bytes, CRC-checked on first use; INVALID_ARGUMENT when compressed.
  absl::StatusOr<absl::string_view> Contents(ZipEntry& entry);
  const std::vector<ZipEntry>& entries() const { return entries_; }
  uint64_t file_size() const { return bytes_.size(); }

 private:
  ZipArchive(absl::string_view bytes, const std::string& what) : bytes_(bytes), what_(what) {}

  absl::Status Truncated(absl::string_view detail) const {
    return absl::DataLossError(absl::StrCat(what_, ": truncated zip: ", detail));
  }
  absl::Status Corrupt(absl::string_view detail) const {
    return absl::DataLossError(absl::StrCat(what_, ": corrupt zip: ", detail));
  }
  absl::Status ParseCentralDirectory(uint64_t cd_offset, uint64_t cd_size, uint64_t count);

  absl::string_view bytes_;
  std::string what_;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, size_t> by_name_;
};

}  // namespace ft::worker::weights_internal

#endif  // FT_WORKER_WEIGHTS_ZIP_ARCHIVE_H_
