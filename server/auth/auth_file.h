// --auth-file: the identities finetuned accepts, as JSON.
//
//   {"identities": [{"name": "alice", "tenant": "vision", "role": "user",
//                    "token_sha256": "<hex sha256 of the token>",
//                    "dataset_roots": ["/datasets/vision"],
//                    "quota": {"max_queued_jobs": 10, "max_storage_bytes": 1e11}}]}
//
// Only hashes of tokens: a leaked auth file lets no one in.
#ifndef FT_SERVER_AUTH_AUTH_FILE_H_
#define FT_SERVER_AUTH_AUTH_FILE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/auth/identity.h"

namespace ft::server::auth {

// Parses and checks the whole file; the first problem is INVALID_ARGUMENT
// naming the entry and field ("identities[1].role: ..."). Unknown fields
// are refused too, so that a misspelt "quota" is not silently unlimited.
// Names and token hashes are unique; hashes come back in lower case.
absl::StatusOr<std::vector<Identity>> ParseAuthFile(absl::string_view json);

// Reads `path` and parses it; the error names the file.
absl::StatusOr<std::vector<Identity>> LoadAuthFile(const std::string& path);

}  // namespace ft::server::auth

#endif  // FT_SERVER_AUTH_AUTH_FILE_H_
