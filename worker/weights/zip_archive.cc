#include "worker/weights/zip_archive.h"

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/util/status.h"
#include "worker/weights/checks.h"

namespace ft::worker::weights_internal {
namespace {

constexpr uint64_t kMaxZipEntries = 100000;
constexpr size_t kMaxEntryNameBytes = 4096;

constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint64_t kEndSize = 22;
constexpr uint64_t kZip64EndSize = 56;
constexpr uint64_t kZip64LocatorSize = 20;
constexpr uint64_t kCentralHeaderSize = 46;
constexpr uint64_t kLocalHeaderSize = 30;

uint16_t Le16(const char* p) {
  return static_cast<uint16_t>(static_cast<uint8_t>(p[0]) | static_cast<uint8_t>(p[1]) << 8);
}
uint32_t Le32(const char* p) {
  return static_cast<uint32_t>(Le16(p)) | static_cast<uint32_t>(Le16(p + 2)) << 16;
}
uint64_t Le64(const char* p) {
  return static_cast<uint64_t>(Le32(p)) | static_cast<uint64_t>(Le32(p + 4)) << 32;
}

}  // namespace

absl::StatusOr<ZipArchive> ZipArchive::Open(absl::string_view bytes, const std::string& what) {
  if (bytes.size() < 4 || Le32(bytes.data()) != kLocalHeaderSig) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not a zip archive"));
  }
  ZipArchive zip(bytes, what);
  const char* p = bytes.data();
  const uint64_t n = bytes.size();
  if (n < kEndSize) return zip.Truncated("shorter than an end-of-central-directory record");

  // The end record is the last 22 bytes plus a comment of up to 64 KiB; its
  // comment length must reach exactly to the end of the file.
  const uint64_t last = n - kEndSize;
  const uint64_t lowest = last > 0xFFFF ? last - 0xFFFF : 0;
  uint64_t end = 0;
  bool found = false;
  for (uint64_t pos = last + 1; pos-- > lowest;) {
    if (Le32(p + pos) == kEndSig && pos + kEndSize + Le16(p + pos + 20) == n) {
      end = pos;
      found = true;
      break;
    }
  }
  if (!found) return zip.Truncated("no end-of-central-directory record");

  uint64_t disk = Le16(p + end + 4);
  uint64_t cd_disk = Le16(p + end + 6);
  uint64_t count_on_disk = Le16(p + end + 8);
  uint64_t count = Le16(p + end + 10);
  uint64_t cd_size = Le32(p + end + 12);
  uint64_t cd_offset = Le32(p + end + 16);
  uint64_t cd_limit = end;  // the central directory ends before this

  if (end >= kZip64LocatorSize && Le32(p + end - kZip64LocatorSize) == kZip64LocatorSig) {
    const uint64_t locator = end - kZip64LocatorSize;
    const uint64_t z64 = Le64(p + locator + 8);
    if (Le32(p + locator + 16) > 1) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": multi-disk zip archives are not supported"));
    }
    if (!InRange(z64, kZip64EndSize, locator) || Le32(p + z64) != kZip64EndSig) {
      return zip.Corrupt(absl::StrCat("bad zip64 end record offset ", z64));
    }
    const uint64_t record_size = Le64(p + z64 + 4);
    if (record_size < kZip64EndSize - 12 || !InRange(z64 + 12, record_size, locator)) {
      return zip.Corrupt(absl::StrCat("bad zip64 end record size ", record_size));
    }
    disk = Le32(p + z64 + 16);
    cd_disk = Le32(p + z64 + 20);
    count_on_disk = Le64(p + z64 + 24);
    count = Le64(p + z64 + 32);
    cd_size = Le64(p + z64 + 40);
    cd_offset = Le64(p + z64 + 48);
    cd_limit = z64;
  }
  if (disk != 0 || cd_disk != 0 || count_on_disk != count) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": multi-disk zip archives are not supported"));
  }
  if (count > kMaxZipEntries) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": zip has ", count, " entries, more than the limit of ", kMaxZipEntries));
  }
  if (!InRange(cd_offset, cd_size, cd_limit)) {
    return zip.Truncated(absl::StrCat("central directory (", cd_size, " bytes at offset ", cd_offset,
                                      ") lies outside the ", cd_limit,
                                      " bytes before the end record"));
  }
  if (count * kCentralHeaderSize > cd_size) {
    return zip.Corrupt(absl::StrCat(count, " entries cannot fit a central directory of ", cd_size,
                                    " bytes"));
  }
  FT_RETURN_IF_ERROR(zip.ParseCentralDirectory(cd_offset, cd_size, count));
  return zip;
}

absl::Status ZipArchive::ParseCentralDirectory(uint64_t cd_offset, uint64_t cd_size,
                                               uint64_t count) {
  const char* p = bytes_.data();
  const uint64_t cd_end = cd_offset + cd_size;
  entries_.reserve(count);
  uint64_t pos = cd_offset;
  for (uint64_t i = 0; i < count; ++i) {
    if (!InRange(pos, kCentralHeaderSize, cd_end) || Le32(p + pos) != kCentralHeaderSig) {
      return Corrupt(absl::StrCat("central directory entry ", i, " at offset ", pos, " is invalid"));
    }
    const char* h = p + pos;
    const uint16_t flags = Le16(h + 8);
    const uint16_t method = Le16(h + 10);
    const uint32_t crc = Le32(h + 16);
    uint64_t compressed = Le32(h + 20);
    uint64_t size = Le32(h + 24);
    const uint64_t name_len = Le16(h + 28);
    const uint64_t extra_len = Le16(h + 30);
    const uint64_t comment_len = Le16(h + 32);
    uint64_t disk = Le16(h + 34);
    uint64_t header_offset = Le32(h + 42);
    if (!InRange(pos + kCentralHeaderSize, name_len + extra_len + comment_len, cd_end)) {
      return Corrupt(absl::StrCat("central directory entry ", i, " runs past the directory"));
    }
    absl::string_view name(h + kCentralHeaderSize, name_len);
    absl::string_view extra(h + kCentralHeaderSize + name_len, extra_len);
    pos += kCentralHeaderSize + name_len + extra_len + comment_len;

    // Zip64 extended information: the 64-bit values of the saturated fields, in order.
    const bool need_size = size == 0xFFFFFFFF;
    const bool need_compressed = compressed == 0xFFFFFFFF;
    const bool need_offset = header_offset == 0xFFFFFFFF;
    const bool need_disk = disk == 0xFFFF;
    if (need_size || need_compressed || need_offset || need_disk) {
      bool have_zip64 = false;
      size_t q = 0;
      while (q + 4 <= extra.size()) {
        const uint16_t id = Le16(extra.data() + q);
        const size_t len = Le16(extra.data() + q + 2);
        if (len > extra.size() - q - 4) {
          return Corrupt(absl::StrCat("extra field of ", Quote(name), " runs past its entry"));
        }
        if (id == 0x0001) {
          absl::string_view f = extra.substr(q + 4, len);
          size_t r = 0;
          auto take = [&](bool need, size_t width, uint64_t* out) {
            if (!need) return true;
            if (width > f.size() - r) return false;
            *out = width == 8 ? Le64(f.data() + r) : Le32(f.data() + r);
            r += width;
            return true;
          };
          if (!take(need_size, 8, &size) || !take(need_compressed, 8, &compressed) ||
              !take(need_offset, 8, &header_offset) || !take(need_disk, 4, &disk)) {
            return Corrupt(absl::StrCat("zip64 field of ", Quote(name), " is too short"));
          }
          have_zip64 = true;
          break;
        }
        q += 4 + len;
      }
      if (!have_zip64) {
        return Corrupt(absl::StrCat("entry ", Quote(name), " lacks its zip64 extra field"));
      }
    }

    if (name.empty() || name.size() > kMaxEntryNameBytes || name.find('\0') != name.npos) {
      return Corrupt(absl::StrCat("entry ", i, " has an invalid name"));
    }
    if (disk != 0) {
      return absl::InvalidArgumentError(absl::StrCat(what_, ": multi-disk zip archives are not supported"));
    }
    if ((flags & 0x0041) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what_, ": zip entry ", Quote(name), " is encrypted"));
    }
    // Compressed entries (TorchScript's code/) may be listed; Contents refuses them.
    if (method == 0 && compressed != size) {
      return Corrupt(absl::StrCat("stored entry ", Quote(name), " has compressed size ",
                                  compressed, " but size ", size));
    }

    // The local header only tells where the data starts.
    if (!InRange(header_offset, kLocalHeaderSize, cd_offset) ||
        Le32(p + header_offset) != kLocalHeaderSig) {
      return Corrupt(absl::StrCat("local header of ", Quote(name), " at offset ", header_offset,
                                  " is invalid"));
    }
    const char* l = p + header_offset;
    const uint16_t local_flags = Le16(l + 6);
    const uint16_t local_method = Le16(l + 8);
    const uint32_t local_crc = Le32(l + 14);
    const uint32_t local_compressed = Le32(l + 18);
    const uint32_t local_size = Le32(l + 22);
    const uint64_t local_name_len = Le16(l + 26);
    const uint64_t local_extra_len = Le16(l + 28);
    if (!InRange(header_offset + kLocalHeaderSize, local_name_len + local_extra_len, cd_offset) ||
        absl::string_view(l + kLocalHeaderSize, local_name_len) != name) {
      return Corrupt(absl::StrCat("local header of ", Quote(name),
                                  " does not match the central directory"));
    }
    if (local_method != method ||
        ((local_flags & 0x0008) == 0 && local_compressed != 0xFFFFFFFF &&
         (local_crc != crc || local_compressed != compressed || local_size != size))) {
      return Corrupt(absl::StrCat("local header of ", Quote(name),
                                  " disagrees with the central directory"));
    }
    const uint64_t data_offset = header_offset + kLocalHeaderSize + local_name_len + local_extra_len;
    if (!InRange(data_offset, compressed, cd_offset)) {
      return Truncated(absl::StrCat("entry ", Quote(name), " claims ", compressed, " bytes at offset ",
                                    data_offset, ", past the end of the records (", cd_offset,
                                    " bytes) in a file of ", bytes_.size(), " bytes"));
    }
    ZipEntry entry;
    entry.name = std::string(name);
    entry.header_offset = header_offset;
    entry.data_offset = data_offset;
    entry.size = compressed;
    entry.method = method;
    entry.crc32 = crc;
    if (!by_name_.emplace(entry.name, entries_.size()).second) {
      return Corrupt(absl::StrCat("duplicate entry ", Quote(name)));
    }
    entries_.push_back(std::move(entry));
  }
  if (pos != cd_end) {
    return Corrupt(absl::StrCat("central directory has ", cd_end - pos,
                                " bytes beyond its ", count, " entries"));
  }

  // No two records may share bytes.
  std::vector<const ZipEntry*> order;
  order.reserve(entries_.size());
  for (const ZipEntry& e : entries_) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const ZipEntry* a, const ZipEntry* b) {
    return a->header_offset < b->header_offset;
  });
  for (size_t i = 1; i < order.size(); ++i) {
    if (order[i]->header_offset < order[i - 1]->data_offset + order[i - 1]->size) {
      return Corrupt(absl::StrCat("entries ", Quote(order[i - 1]->name), " and ",
                                  Quote(order[i]->name), " overlap"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<absl::string_view> ZipArchive::Contents(ZipEntry& entry) {
  if (entry.method != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        what_, ": zip entry ", Quote(entry.name), " is compressed (method ", entry.method,
        "); only stored entries, as torch.save writes them, are supported"));
  }
  absl::string_view data = bytes_.substr(entry.data_offset, entry.size);
  if (!entry.crc_checked) {
    const uint32_t crc = static_cast<uint32_t>(
        crc32_z(0, reinterpret_cast<const Bytef*>(data.data()), data.size()));
    if (crc != entry.crc32) {
      return absl::DataLossError(absl::StrCat(
          what_, ": zip entry ", Quote(entry.name), " fails its CRC-32 check (stored ",
          absl::Hex(entry.crc32, absl::kZeroPad8), ", computed ", absl::Hex(crc, absl::kZeroPad8),
          ")"));
    }
    entry.crc_checked = true;
  }
  return data;
}

}  // namespace ft::worker::weights_internal
