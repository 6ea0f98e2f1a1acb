#include "worker/weights/safetensors.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <limits>
#include <map>
#include <new>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/util/files.h"
#include "common/util/status.h"
#include "worker/weights/tensor_bytes.h"

namespace ft::worker {
namespace {

using weights_internal::CheckedBytes;
using weights_internal::CheckedNumel;
using weights_internal::kMaxDims;
using weights_internal::Quote;
using weights_internal::TensorFromBytes;

constexpr uint64_t kMaxFileBytes = uint64_t{1} << 36;       // 64 GiB
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;   // as the reference implementation
constexpr size_t kMaxJsonDepth = 8;  // the format needs 3: {name: {shape: [...]}}
constexpr size_t kMaxTensors = 100000;
constexpr char kMetadataKey[] = "__metadata__";

bool Dtype(const std::string& name, at::ScalarType* dtype) {
  static const std::pair<const char*, at::ScalarType> kTypes[] = {
      {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf},  {"BF16", at::kBFloat16},
      {"I64", at::kLong},   {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},
      {"U8", at::kByte},    {"BOOL", at::kBool},
  };
  for (const auto& [type_name, type] : kTypes) {
    if (name == type_name) {
      *dtype = type;
      return true;
    }
  }
  return false;
}

// Deepest bracket nesting of a JSON text, stopping early past `limit`, so
// that a hostile header cannot make the parser build a deep tree.
size_t JsonDepth(absl::string_view json, size_t limit) {
  size_t depth = 0;
  size_t deepest = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : json) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) break;
    } else if ((c == '}' || c == ']') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

// A JSON array of non-negative integers that fit int64, at most `max_size` long.
bool IntArray(const nlohmann::json& j, size_t max_size, std::vector<int64_t>* out) {
  if (!j.is_array() || j.size() > max_size) return false;
  out->clear();
  for (const nlohmann::json& v : j) {
    if (!v.is_number_unsigned()) return false;
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    out->push_back(static_cast<int64_t>(u));
  }
  return true;
}

struct Entry {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin;
  uint64_t end;
};

absl::StatusOr<std::vector<NamedTensor>> Parse(absl::string_view bytes, const std::string& what,
                                               std::map<std::string, std::string>* metadata) {
  if (bytes.size() < 8) {
    return absl::DataLossError(
        absl::StrCat(what, ": truncated safetensors: shorter than the 8-byte header length"));
  }
  uint64_t header_len = 0;
  for (size_t k = 8; k-- > 0;) header_len = (header_len << 8) | static_cast<uint8_t>(bytes[k]);
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": safetensors header of ", header_len,
                                                   " bytes is larger than the limit of ",
                                                   kMaxHeaderBytes));
  }
  if (header_len > bytes.size() - 8) {
    return absl::DataLossError(absl::StrCat(what, ": truncated safetensors: header of ",
                                            header_len, " bytes in a file of ", bytes.size()));
  }
  const absl::string_view header = bytes.substr(8, header_len);
  const absl::string_view data = bytes.substr(8 + header_len);
  if (header.empty() || header[0] != '{') {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": not a safetensors file (header does not start with '{')"));
  }
  if (JsonDepth(header, kMaxJsonDepth) > kMaxJsonDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": safetensors header nests deeper than ", kMaxJsonDepth));
  }

  // nlohmann keeps the last of duplicate keys; the format forbids them.
  std::vector<std::set<std::string>> keys_per_object;
  std::string duplicate;
  auto on_event = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if (event == Event::object_start) {
      keys_per_object.emplace_back();
    } else if (event == Event::object_end) {
      if (!keys_per_object.empty()) keys_per_object.pop_back();
    } else if (event == Event::key && !keys_per_object.empty() && parsed.is_string()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!keys_per_object.back().insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  const nlohmann::json j =
      nlohmann::json::parse(header.begin(), header.end(), on_event, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(
        absl::StrCat(what, ": safetensors header is not a valid JSON object"));
  }
  if (!duplicate.empty()) {
    return absl::DataLossError(
        absl::StrCat(what, ": safetensors header repeats the key ", Quote(duplicate)));
  }
  if (j.size() > kMaxTensors + 1) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": more than ", kMaxTensors, " tensors"));
  }

  std::vector<Entry> entries;
  entries.reserve(j.size());
  for (const auto& item : j.items()) {
    const std::string& name = item.key();
    const nlohmann::json& v = item.value();
    if (name == kMetadataKey) {
      if (!v.is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": __metadata__ is not an object"));
      }
      for (const auto& m : v.items()) {
        if (!m.value().is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(what, ": __metadata__ value ",
                                                         Quote(m.key()), " is not a string"));
        }
        if (metadata != nullptr) (*metadata)[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string tensor = absl::StrCat(what, ": tensor ", Quote(name));
    if (name.empty() || !v.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(tensor, " is not a tensor description"));
    }
    for (const auto& field : v.items()) {
      if (field.key() != "dtype" && field.key() != "shape" && field.key() != "data_offsets") {
        return absl::InvalidArgumentError(
            absl::StrCat(tensor, " has an unknown field ", Quote(field.key())));
      }
    }
    Entry e;
    e.name = name;
    auto dtype = v.find("dtype");
    if (dtype == v.end() || !dtype->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(tensor, " has no dtype"));
    }
    const std::string& dtype_name = dtype->get_ref<const std::string&>();
    if (!Dtype(dtype_name, &e.dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat(tensor, " has unsupported dtype ", Quote(dtype_name)));
    }
    auto shape = v.find("shape");
    if (shape == v.end() || !IntArray(*shape, kMaxDims, &e.shape)) {
      return absl::InvalidArgumentError(
          absl::StrCat(tensor, " has no shape of at most ", kMaxDims, " non-negative integers"));
    }
    auto offsets = v.find("data_offsets");
    std::vector<int64_t> range;
    if (offsets == v.end() || !IntArray(*offsets, 2, &range) || range.size() != 2 ||
        range[1] < range[0]) {
      return absl::InvalidArgumentError(absl::StrCat(tensor, " has no valid data_offsets"));
    }
    e.begin = static_cast<uint64_t>(range[0]);
    e.end = static_cast<uint64_t>(range[1]);
    int64_t numel = 0;
    uint64_t nbytes = 0;
    if (!CheckedNumel(e.shape, &numel) ||
        !CheckedBytes(numel, c10::elementSize(e.dtype), &nbytes) || nbytes != e.end - e.begin) {
      return absl::DataLossError(absl::StrCat(
          tensor, ": data_offsets [", e.begin, ", ", e.end, ") do not hold shape [",
          absl::StrJoin(e.shape, ", "), "] of ", dtype_name));
    }
    if (e.end > data.size()) {
      return absl::DataLossError(absl::StrCat(what, ": truncated safetensors: tensor ",
                                              Quote(name), " ends at byte ", e.end,
                                              " of a data area of ", data.size()));
    }
    entries.push_back(std::move(e));
  }

  // The tensors must tile the data area: no gaps, no overlaps, nothing after.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  uint64_t cursor = 0;
  for (const Entry& e : entries) {
    if (e.begin != cursor) {
      return absl::DataLossError(absl::StrCat(what, ": tensor ", Quote(e.name), " starts at byte ",
                                              e.begin, " where ", cursor,
                                              " was expected (tensors overlap or leave a gap)"));
    }
    cursor = e.end;
  }
  if (cursor != data.size()) {
    return absl::DataLossError(absl::StrCat(what, ": ", data.size() - cursor,
                                            " bytes after the last tensor"));
  }

  std::vector<NamedTensor> out;
  out.reserve(entries.size());
  for (const Entry& e : entries) {
    FT_ASSIGN_OR_RETURN(at::Tensor t,
                        TensorFromBytes(data.substr(e.begin, e.end - e.begin), e.dtype, e.shape,
                                        absl::StrCat(what, ": tensor ", Quote(e.name))));
    out.push_back(NamedTensor{e.name, std::move(t)});
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<NamedTensor>> ParseSafetensors(absl::string_view bytes,
                                                          const std::string& what_for_errors,
                                                          std::map<std::string, std::string>* metadata) {
  return weights_internal::GuardExceptions<c10::Error>(
      what_for_errors, [&] { return Parse(bytes, what_for_errors, metadata); });
}

absl::StatusOr<std::vector<NamedTensor>> ReadSafetensors(const std::string& path,
                                                         std::map<std::string, std::string>* metadata) {
  return weights_internal::GuardExceptions<c10::Error>(
      path, [&]() -> absl::StatusOr<std::vector<NamedTensor>> {
        FT_ASSIGN_OR_RETURN(std::string bytes, util::ReadFile(path, kMaxFileBytes));
        return ParseSafetensors(bytes, path, metadata);
      });
}

}  // namespace ft::worker
