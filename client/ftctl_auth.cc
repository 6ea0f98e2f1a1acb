// `ftctl auth new-token`: a token and the auth-file line that admits it,
// made here so that the token never has to pass through the server.
#include <iostream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "client/ftctl_handlers.h"
#include "common/util/random_token.h"
#include "common/util/sha256.h"

namespace ft::client::ftctl {
namespace {

// What finetuned's auth file accepts for names and tenants
// (server/auth/auth_file.cc); such names also need no JSON escaping.
bool IsPlainName(const std::string& s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_' && c != '.' && c != '@') return false;
  }
  return true;
}

}  // namespace

int NewToken(Invocation& inv) {
  const std::string name = inv.Flag("name"), tenant = inv.Flag("tenant"), role = inv.Flag("role");
  if (!IsPlainName(name) || !IsPlainName(tenant)) {
    return inv.Refuse("--name and --tenant must be 1 to 128 of A-Z a-z 0-9 . _ - @");
  }
  if (role != "admin" && role != "user" && role != "viewer" && role != "worker") {
    return inv.Refuse("--role must be admin, user, viewer or worker");
  }
  auto token = util::NewRandomToken();
  if (!token.ok()) return inv.Refuse(token.status().message());
  const std::string identity =
      absl::StrCat(R"({"name": ")", name, R"(", "tenant": ")", tenant, R"(", "role": ")", role,
                   R"(", "token_sha256": ")", util::Sha256Hex(*token), R"("})");
  if (inv.json()) {
    std::cout << R"({"token": ")" << *token << R"(", "identity": )" << identity << "}" << std::endl;
  } else {
    std::cout << *token << "\n" << identity << std::endl;
    std::cerr << "ftctl: line 1 is the token: give it to " << name
              << " (e.g. in a file for --token-file). Add line 2 to finetuned's --auth-file \"identities\", then "
                 "send finetuned SIGHUP."
              << std::endl;
  }
  return kExitOk;
}

}  // namespace ft::client::ftctl
