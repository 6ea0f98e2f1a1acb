#ifndef FT_CLIENT_FTCTL_DATASETS_H_
#define FT_CLIENT_FTCTL_DATASETS_H_

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/client.h"

namespace ft::client {

// What `ftctl datasets ...` needs from ftctl's command line: its words and
// flags, the output mode, the client, and ftctl's own ways of refusing
// (exit 2), failing on a status (exit 2 or 3) and checking flags.
struct DatasetsCommandContext {
  std::vector<std::string> words;  // {"datasets", SUBCOMMAND, ARGS...}
  std::map<std::string, std::string> flags;
  bool json = false;
  Client* client = nullptr;  // not owned
  std::function<int(const std::string& message)> refuse;
  std::function<int(const absl::Status& status)> fail;
  // Returns an exit code when a flag outside `allowed` was given.
  std::function<std::optional<int>(const std::vector<std::string>& allowed)> check_flags;
};

// `datasets upload DIR|ARCHIVE --name N [--sha256 HEX] [--format F]`,
// `datasets list`, `datasets delete NAME`. Returns ftctl's exit code. A DIR
// is packed into a deterministic tar in $TMPDIR first (deleted afterwards).
int RunDatasetsCommand(const DatasetsCommandContext& ctx);

}  // namespace ft::client

#endif  // FT_CLIENT_FTCTL_DATASETS_H_
