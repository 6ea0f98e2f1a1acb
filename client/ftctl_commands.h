#ifndef FT_CLIENT_FTCTL_COMMANDS_H_
#define FT_CLIENT_FTCTL_COMMANDS_H_

// ftctl's command table and what runs it. Each command is one row of a
// table (client/ftctl.cc): its name, positional arguments, flags, help text
// and handler. Parsing, flag and argument checks, dispatch, `ftctl help`,
// `ftctl CMD --help` and the top-level usage are all generated from the rows,
// so the help cannot drift from what a command accepts.

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "client/client.h"
#include "common/channel/channel.h"
#include "google/protobuf/message.h"
#include "google/protobuf/timestamp.pb.h"

namespace ft::client::ftctl {

// The exit codes users rely on (DESIGN.md, "Exit codes").
inline constexpr int kExitOk = 0;           // done, or the job SUCCEEDED
inline constexpr int kExitJobFailed = 1;    // the job FAILED or was CANCELLED
inline constexpr int kExitRefused = 2;      // bad flags, or the server refused
inline constexpr int kExitUnreachable = 3;  // the server could not be reached

// One --flag a command takes.
struct FlagSpec {
  absl::string_view name;   // without the leading "--"
  absl::string_view value;  // what its value looks like ("N", "URI"); empty for a switch
  absl::string_view help;   // one line
  bool required = false;   // refused when absent or empty
};

// One positional argument. "IMAGE..." stands for one or more, "[X]" for an
// optional one and "[X...]" for any number.
struct ArgSpec {
  absl::string_view name;
  absl::string_view help;  // one line
};

class Invocation;
// Runs a command whose flags and arguments have been checked against its row;
// returns the exit code.
using Handler = int (*)(Invocation&);

struct Command {
  absl::string_view name;     // one or two words: "get", "models download"
  absl::string_view section;  // its heading in the usage text: "Jobs", "Models", ...
  std::vector<ArgSpec> args;
  std::vector<FlagSpec> flags;
  absl::string_view summary;      // one line, in the usage text
  absl::string_view description;  // a paragraph after the summary in `ftctl help CMD`; may be empty
  Handler handler;
};

// One run of one command: its arguments and flags as given, the output mode,
// the client and ftctl's ways of answering. Not thread-safe.
class Invocation {
 public:
  Invocation(const std::vector<Command>& commands, const Command& command, std::vector<std::string> args,
             std::map<std::string, std::string> flags, bool json, channel::ChannelOptions channel_options,
             std::shared_ptr<grpc::Channel> channel);

  const Command& command() const { return command_; }
  // The whole table, for `ftctl help`.
  const std::vector<Command>& commands() const { return commands_; }
  // The positional arguments after the command's name.
  const std::vector<std::string>& args() const { return args_; }
  bool Has(const std::string& flag) const { return flags_.count(flag) > 0; }
  std::string Flag(const std::string& flag, const std::string& fallback = "") const;
  bool json() const { return json_; }
  // Created on first use, over the channel Run() made from the global flags.
  Client& client();

  // Writes "ftctl: MESSAGE" to stderr; returns kExitRefused.
  int Refuse(absl::string_view message) const;
  // Reports a failed call on stderr: kExitUnreachable for UNAVAILABLE and
  // DEADLINE_EXCEEDED, else kExitRefused with the code and the server's message.
  int Fail(const absl::Status& status) const;
  // A delete's answer: "deleted NAME" (nothing in JSON mode), or its failure.
  int Deleted(const absl::Status& status, const std::string& name) const;
  // With --output json, prints `items` as the JSON of a `Response` whose
  // repeated field `add` appends to, and returns true; else returns false
  // and the caller prints its table.
  template <typename Response, typename Items, typename Item>
  bool PrintedAsJson(const Items& items, Item* (Response::*add)()) const {
    if (!json_) return false;
    Response response;
    for (const auto& item : items) *(response.*add)() = item;
    PrintJson(response);
    return true;
  }
  void PrintJson(const google::protobuf::Message& message) const;

 private:
  const std::vector<Command>& commands_;
  const Command& command_;
  std::vector<std::string> args_;
  std::map<std::string, std::string> flags_;
  bool json_;
  channel::ChannelOptions channel_options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Client> client_;
};

// ftctl's main: parses argv against `commands`, checks the command's flags
// and arguments, and runs it (or prints help). Returns the exit code.
int Run(const std::vector<Command>& commands, int argc, char** argv);

// The `help [COMMAND...]` handler: the usage text, or one command's help.
int Help(Invocation& inv);

// Whether a listing holds objects of more than one tenant (only an admin's
// can): list commands then add a TENANT column.
template <typename Items>
bool SpansTenants(const Items& items) {
  for (const auto& item : items) {
    if (item.tenant() != items.begin()->tenant()) return true;
  }
  return false;
}

// The TENANT column's cell, padded; empty when the column is not shown.
inline std::string TenantCell(bool shown, const std::string& tenant) {
  if (!shown) return "";
  return tenant + std::string(tenant.size() < 16 ? 16 - tenant.size() : 1, ' ');
}

// A timestamp as "2024-05-01T12:00:00Z", or "-" when unset.
std::string TimeText(const google::protobuf::Timestamp& t);

}  // namespace ft::client::ftctl

#endif  // FT_CLIENT_FTCTL_COMMANDS_H_
