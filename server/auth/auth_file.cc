#include "server/auth/auth_file.h"

#include <set>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/util/files.h"
#include "nlohmann/json.hpp"

namespace ft::server::auth {
namespace {

using Json = nlohmann::json;

constexpr size_t kMaxNameLength = 128;
constexpr size_t kMaxAuthFileBytes = 16 << 20;

absl::Status Bad(const std::string& where, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", why));
}

// Names and tenants end up in logs, audit lines and (tenants) paths: keep
// them to characters that need no quoting anywhere.
bool IsPlainName(const std::string& s) {
  if (s.empty() || s.size() > kMaxNameLength) return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_' && c != '.' && c != '@') return false;
  }
  return true;
}

bool IsSha256Hex(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!absl::ascii_isxdigit(c)) return false;
  }
  return true;
}

absl::Status CheckKeys(const Json& object, const std::string& where, const std::set<std::string>& allowed) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    if (allowed.count(it.key()) == 0) return Bad(absl::StrCat(where, ".", it.key()), "unknown field");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> PlainName(const Json& entry, const std::string& where, const char* field) {
  auto it = entry.find(field);
  const std::string at = absl::StrCat(where, ".", field);
  if (it == entry.end()) return Bad(at, "required");
  if (!it->is_string() || !IsPlainName(it->get<std::string>())) {
    return Bad(at, absl::StrCat("must be 1 to ", kMaxNameLength, " of A-Z a-z 0-9 . _ - @"));
  }
  return it->get<std::string>();
}

absl::Status ParseQuota(const Json& quota, const std::string& where, Quota* out) {
  if (!quota.is_object()) return Bad(where, "must be an object");
  if (absl::Status s = CheckKeys(quota, where, {"max_queued_jobs", "max_storage_bytes"}); !s.ok()) return s;
  for (const auto& [key, field] : {std::pair{"max_queued_jobs", &out->max_queued_jobs},
                                   std::pair{"max_storage_bytes", &out->max_storage_bytes}}) {
    auto it = quota.find(key);
    if (it == quota.end()) continue;
    if (!it->is_number_integer() || it->get<int64_t>() < 0) {
      return Bad(absl::StrCat(where, ".", key), "must be a whole number >= 0");
    }
    *field = it->get<int64_t>();
  }
  return absl::OkStatus();
}

absl::StatusOr<Identity> ParseIdentity(const Json& entry, const std::string& where) {
  if (!entry.is_object()) return Bad(where, "must be an object");
  if (absl::Status s =
          CheckKeys(entry, where, {"name", "tenant", "role", "token_sha256", "dataset_roots", "quota"});
      !s.ok()) {
    return s;
  }
  Identity id;
  auto name = PlainName(entry, where, "name");
  if (!name.ok()) return name.status();
  id.name = *name;
  auto tenant = PlainName(entry, where, "tenant");
  if (!tenant.ok()) return tenant.status();
  id.tenant = *tenant;
  auto role = entry.find("role");
  if (role == entry.end()) return Bad(where + ".role", "required");
  if (!role->is_string() || !ParseRole(role->get<std::string>(), &id.role)) {
    return Bad(where + ".role", "must be admin, user, viewer or worker");
  }
  auto hash = entry.find("token_sha256");
  if (hash == entry.end()) return Bad(where + ".token_sha256", "required");
  if (!hash->is_string() || !IsSha256Hex(hash->get<std::string>())) {
    return Bad(where + ".token_sha256",
               "must be the 64 hex digits of the token's SHA-256 (the token itself is never kept; "
               "ftctl auth new-token prints both)");
  }
  id.token_sha256 = absl::AsciiStrToLower(hash->get<std::string>());
  if (auto roots = entry.find("dataset_roots"); roots != entry.end()) {
    if (!roots->is_array()) return Bad(where + ".dataset_roots", "must be a list of absolute directories");
    for (size_t i = 0; i < roots->size(); ++i) {
      const Json& r = (*roots)[i];
      if (!r.is_string() || r.get<std::string>().empty() || r.get<std::string>()[0] != '/') {
        return Bad(absl::StrCat(where, ".dataset_roots[", i, "]"), "must be an absolute directory");
      }
      id.dataset_roots.push_back(r.get<std::string>());
    }
  }
  if (auto quota = entry.find("quota"); quota != entry.end()) {
    if (absl::Status s = ParseQuota(*quota, where + ".quota", &id.quota); !s.ok()) return s;
  }
  return id;
}

}  // namespace

absl::StatusOr<std::vector<Identity>> ParseAuthFile(absl::string_view text) {
  Json doc = Json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  if (!doc.is_object()) return absl::InvalidArgumentError("must be a JSON object with \"identities\"");
  if (absl::Status s = CheckKeys(doc, "auth file", {"identities"}); !s.ok()) return s;
  auto list = doc.find("identities");
  if (list == doc.end() || !list->is_array()) return Bad("identities", "required, a list");
  std::vector<Identity> out;
  std::set<std::string> names, hashes;
  for (size_t i = 0; i < list->size(); ++i) {
    const std::string where = absl::StrCat("identities[", i, "]");
    auto id = ParseIdentity((*list)[i], where);
    if (!id.ok()) return id.status();
    if (!names.insert(id->name).second) return Bad(where + ".name", absl::StrCat("'", id->name, "' appears twice"));
    if (!hashes.insert(id->token_sha256).second) {
      return Bad(where + ".token_sha256", "another identity has the same token");
    }
    out.push_back(*std::move(id));
  }
  return out;
}

absl::StatusOr<std::vector<Identity>> LoadAuthFile(const std::string& path) {
  auto text = util::ReadFile(path, kMaxAuthFileBytes);
  if (!text.ok()) return text.status();
  auto ids = ParseAuthFile(*text);
  if (!ids.ok()) return absl::Status(ids.status().code(), absl::StrCat(path, ": ", ids.status().message()));
  return ids;
}

}  // namespace ft::server::auth
