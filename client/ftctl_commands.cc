#include "client/ftctl_commands.h"

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/util/proto_json.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/time_util.h"

namespace ft::client::ftctl {
namespace {

constexpr char kDefaultServer[] = "127.0.0.1:50051";
constexpr size_t kWidth = 80;          // the help text's right margin
constexpr size_t kUsageColumn = 30;    // where a command's summary starts in the usage text
constexpr size_t kFlagColumn = 32;     // where a flag's help starts in a command's help
constexpr size_t kMaxInlineFlags = 3;  // more optional flags than this show as "[flags]"

// Flags every command takes; Run() handles them itself.
const std::vector<FlagSpec>& GlobalFlags() {
  static const auto* kFlags = new std::vector<FlagSpec>{
      {"server", "ADDR", "the finetuned to talk to (default: $FTCTL_SERVER, then 127.0.0.1:50051)"},
      {"token", "TOKEN", "bearer token (default: --token-file, then $FTCTL_TOKEN); visible in ps, prefer those"},
      {"token-file", "FILE", "read the bearer token from the first line of FILE"},
      {"tls", "", "TLS, verifying the server against the system's roots"},
      {"tls-ca", "FILE", "TLS, verifying the server against this PEM CA"},
      {"tls-cert", "FILE", "PEM client certificate, for a server that requires one (with --tls-key)"},
      {"tls-key", "FILE", "PEM key of --tls-cert"},
      {"tls-server-name", "NAME", "the name the server's certificate must carry, if not the host of --server"},
      {"output", "text|json",
       "text for people (default), or json: the protobuf JSON mapping with proto field names; with "
       "--follow one event per line and the final job last"},
      {"help", "", "this text; after a command, that command's help"},
  };
  return *kFlags;
}

// The words and --flag values of a command line, in any order.
struct CommandLine {
  std::vector<std::string> words;
  std::map<std::string, std::string> flags;
};

// `switches` take no value: "--follow" is "--follow=true". Any other flag
// takes the next word as its value unless it is written "--flag=value".
absl::StatusOr<CommandLine> Parse(int argc, char** argv, const std::set<std::string, std::less<>>& switches) {
  CommandLine line;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (!absl::StartsWith(a, "--") || a.size() <= 2) {
      line.words.push_back(std::move(a));
      continue;
    }
    std::string name = a.substr(2), value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (switches.count(name) > 0) {
      line.flags[name] = has_value ? value : "true";
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      value = argv[++i];
    }
    line.flags[name] = value;
  }
  return line;
}

std::set<std::string, std::less<>> Switches(const std::vector<Command>& commands) {
  std::set<std::string, std::less<>> switches;
  for (const FlagSpec& f : GlobalFlags()) {
    if (f.value.empty()) switches.emplace(f.name);
  }
  for (const Command& c : commands) {
    for (const FlagSpec& f : c.flags) {
      if (f.value.empty()) switches.emplace(f.name);
    }
  }
  return switches;
}

const FlagSpec* FindFlag(const std::vector<FlagSpec>& flags, absl::string_view name) {
  auto it = std::find_if(flags.begin(), flags.end(), [&](const FlagSpec& f) { return f.name == name; });
  return it == flags.end() ? nullptr : &*it;
}

// The command whose name is the longest run of leading `words`; sets *used
// to its number of words.
const Command* FindCommand(const std::vector<Command>& commands, const std::vector<std::string>& words,
                           size_t* used) {
  const Command* best = nullptr;
  *used = 0;
  for (const Command& c : commands) {
    std::vector<absl::string_view> name = absl::StrSplit(c.name, ' ');
    if (name.size() <= *used || name.size() > words.size()) continue;
    if (std::equal(name.begin(), name.end(), words.begin())) {
      best = &c;
      *used = name.size();
    }
  }
  return best;
}

// The commands named "`group` SUBCOMMAND", such as "models list".
std::vector<const Command*> FindGroup(const std::vector<Command>& commands, absl::string_view group) {
  std::vector<const Command*> members;
  for (const Command& c : commands) {
    if (absl::StartsWith(c.name, absl::StrCat(group, " "))) members.push_back(&c);
  }
  return members;
}

std::string FlagText(const FlagSpec& f) {
  return f.value.empty() ? absl::StrCat("--", f.name) : absl::StrCat("--", f.name, " ", f.value);
}

std::string ArgsText(const Command& c) {
  return absl::StrJoin(c.args, " ", [](std::string* out, const ArgSpec& a) { absl::StrAppend(out, a.name); });
}

// "watch JOB [--from SEQ]": the name, the arguments, the required flags, and
// the optional ones, or "[flags]" where there are many.
std::string Synopsis(const Command& c) {
  std::string out(c.name);
  if (!c.args.empty()) absl::StrAppend(&out, " ", ArgsText(c));
  size_t optional = 0;
  for (const FlagSpec& f : c.flags) {
    if (f.required) {
      absl::StrAppend(&out, " ", FlagText(f));
    } else {
      ++optional;
    }
  }
  if (optional > kMaxInlineFlags) return absl::StrCat(out, " [flags]");
  for (const FlagSpec& f : c.flags) {
    if (!f.required) absl::StrAppend(&out, " [", FlagText(f), "]");
  }
  return out;
}

// Appends `text` to `out`, whose last line already holds `column`
// characters, wrapping at kWidth with later lines indented to `column`.
void AppendWrapped(std::string* out, absl::string_view text, size_t column) {
  size_t used = column;
  bool first = true;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (!first && used + 1 + word.size() > kWidth) {
      absl::StrAppend(out, "\n", std::string(column, ' '));
      used = column;
    } else if (!first) {
      out->push_back(' ');
      ++used;
    }
    absl::StrAppend(out, word);
    used += word.size();
    first = false;
  }
  out->push_back('\n');
}

// "  LEFT      RIGHT", RIGHT starting at `column` (on the next line when
// LEFT is too long) and wrapped.
void AppendRow(std::string* out, absl::string_view left, absl::string_view right, size_t column) {
  std::string row = absl::StrCat("  ", left);
  if (row.size() + 2 > column) {
    absl::StrAppend(out, row, "\n");
    row.clear();
  }
  row.resize(column, ' ');
  absl::StrAppend(out, row);
  AppendWrapped(out, right, column);
}

// Only the flags every invocation thinks about; the transport and token
// flags are listed under "Global flags" and would drown the command.
std::string GlobalSynopsis() {
  std::string out = "ftctl";
  for (const FlagSpec& f : GlobalFlags()) {
    if (f.name == "server" || f.name == "output") absl::StrAppend(&out, " [", FlagText(f), "]");
  }
  return out;
}

std::string UsageText(const std::vector<Command>& commands) {
  std::string out = absl::StrCat("usage: ", GlobalSynopsis(), " COMMAND [ARGS]\n");
  std::vector<absl::string_view> sections;
  for (const Command& c : commands) {
    if (std::find(sections.begin(), sections.end(), c.section) == sections.end()) sections.push_back(c.section);
  }
  for (absl::string_view section : sections) {
    absl::StrAppend(&out, "\n", section, ":\n");
    for (const Command& c : commands) {
      if (c.section == section) AppendRow(&out, Synopsis(c), c.summary, kUsageColumn);
    }
  }
  absl::StrAppend(&out, "\nGlobal flags (before or after the command):\n");
  for (const FlagSpec& f : GlobalFlags()) AppendRow(&out, FlagText(f), f.help, kUsageColumn);
  absl::StrAppend(&out,
                  "\n'ftctl help COMMAND' or 'ftctl COMMAND --help' shows a command's arguments and flags.\n"
                  "Exit codes: 0 ok, 1 job failed or cancelled, 2 request refused, 3 server unreachable.\n");
  return out;
}

std::string CommandHelp(const Command& c) {
  std::string out = absl::StrCat("usage: ", GlobalSynopsis(), " ", Synopsis(c), "\n\n");
  std::string summary(c.summary);
  if (!summary.empty()) summary[0] = absl::ascii_toupper(static_cast<unsigned char>(summary[0]));
  AppendWrapped(&out, absl::StrCat(summary, "."), 0);
  if (!c.description.empty()) {
    out.push_back('\n');
    AppendWrapped(&out, c.description, 0);
  }
  if (!c.args.empty()) {
    absl::StrAppend(&out, "\nArguments:\n");
    for (const ArgSpec& a : c.args) AppendRow(&out, a.name, a.help, kFlagColumn);
  }
  if (!c.flags.empty()) {
    absl::StrAppend(&out, "\nFlags:\n");
    for (const FlagSpec& f : c.flags) {
      AppendRow(&out, FlagText(f), f.required ? absl::StrCat(f.help, " (required)") : std::string(f.help),
                kFlagColumn);
    }
  }
  absl::StrAppend(&out, "\nGlobal flags: ",
                  absl::StrJoin(GlobalFlags(), ", ",
                                [](std::string* o, const FlagSpec& f) { absl::StrAppend(o, FlagText(f)); }),
                  " (see 'ftctl help').\n");
  return out;
}

std::string GroupHelp(absl::string_view group, const std::vector<const Command*>& members) {
  std::string out = absl::StrCat("usage: ", GlobalSynopsis(), " ", group, " SUBCOMMAND [ARGS]\n\n");
  for (const Command* c : members) AppendRow(&out, Synopsis(*c), c->summary, kUsageColumn);
  absl::StrAppend(&out, "\n'ftctl help ", group, " SUBCOMMAND' shows a subcommand's arguments and flags.\n");
  return out;
}

int Refuse(absl::string_view message) {
  std::cerr << "ftctl: " << message << std::endl;
  return kExitRefused;
}

// `words` name no command: explain, naming what there is.
int RefuseUnknown(const std::vector<Command>& commands, const std::vector<std::string>& words) {
  const std::vector<const Command*> group = FindGroup(commands, words[0]);
  if (group.empty()) return Refuse(absl::StrCat("unknown command '", words[0], "' (see ftctl help)"));
  const std::string subcommands =
      absl::StrJoin(group, ", ", [&](std::string* out, const Command* c) {
        absl::StrAppend(out, c->name.substr(words[0].size() + 1));
      });
  if (words.size() == 1) return Refuse(absl::StrCat(words[0], " needs a subcommand: ", subcommands));
  return Refuse(absl::StrCat("unknown ", words[0], " command '", words[1], "' (", subcommands, ")"));
}

// Refuses flags the command does not take, a wrong number of arguments and
// missing required flags; nullopt when all is well.
std::optional<int> CheckArgsAndFlags(const Command& c, const std::vector<std::string>& args,
                                     const std::map<std::string, std::string>& flags) {
  for (const auto& [name, value] : flags) {
    if (FindFlag(GlobalFlags(), name) == nullptr && FindFlag(c.flags, name) == nullptr) {
      return Refuse(absl::StrCat("unknown flag --", name, " for '", c.name, "' (see ftctl help ", c.name, ")"));
    }
  }
  size_t min_args = 0;
  size_t max_args = 0;
  for (const ArgSpec& a : c.args) {
    if (!absl::StartsWith(a.name, "[")) ++min_args;
    if (absl::StrContains(a.name, "...")) {
      max_args = std::numeric_limits<size_t>::max();
    } else if (max_args != std::numeric_limits<size_t>::max()) {
      ++max_args;
    }
  }
  if (args.size() < min_args || args.size() > max_args) {
    const std::string takes = !c.args.empty() ? ArgsText(c) : c.flags.empty() ? "no arguments" : "flags only";
    return Refuse(absl::StrCat(c.name, " takes ", takes, " (see ftctl help ", c.name, ")"));
  }
  for (const FlagSpec& f : c.flags) {
    auto it = flags.find(std::string(f.name));
    if (f.required && (it == flags.end() || it->second.empty())) {
      return Refuse(absl::StrCat(c.name, " needs ", FlagText(f)));
    }
  }
  return std::nullopt;
}

}  // namespace

Invocation::Invocation(const std::vector<Command>& commands, const Command& command, std::vector<std::string> args,
                       std::map<std::string, std::string> flags, bool json,
                       channel::ChannelOptions channel_options, std::shared_ptr<grpc::Channel> channel)
    : commands_(commands),
      command_(command),
      args_(std::move(args)),
      flags_(std::move(flags)),
      json_(json),
      channel_options_(std::move(channel_options)),
      channel_(std::move(channel)) {}

std::string Invocation::Flag(const std::string& flag, const std::string& fallback) const {
  auto it = flags_.find(flag);
  return it == flags_.end() ? fallback : it->second;
}

Client& Invocation::client() {
  if (client_ == nullptr) client_ = std::make_unique<Client>(channel_);
  return *client_;
}

int Invocation::Refuse(absl::string_view message) const { return ftctl::Refuse(message); }

int Invocation::Deleted(const absl::Status& status, const std::string& name) const {
  if (!status.ok()) return Fail(status);
  if (!json_) std::cout << "deleted " << name << std::endl;
  return kExitOk;
}

void Invocation::PrintJson(const google::protobuf::Message& message) const {
  std::cout << util::ToJson(message) << std::endl;
}

int Invocation::Fail(const absl::Status& status) const {
  if (absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status)) {
    std::cerr << "ftctl: cannot reach finetuned at " << channel_options_.address << ": " << status.message()
              << std::endl;
    if (const std::string hint = channel::UnreachableHint(channel_options_); !hint.empty()) {
      std::cerr << "ftctl: hint: " << hint << std::endl;
    }
    return kExitUnreachable;
  }
  std::cerr << "ftctl: " << absl::StatusCodeToString(status.code()) << ": " << status.message() << std::endl;
  return kExitRefused;
}

int Run(const std::vector<Command>& commands, int argc, char** argv) {
  absl::StatusOr<CommandLine> line = Parse(argc, argv, Switches(commands));
  if (!line.ok()) return Refuse(line.status().message());
  auto flag = [&](const std::string& name, std::string fallback) {
    auto it = line->flags.find(name);
    return it == line->flags.end() ? fallback : it->second;
  };
  const std::string output = flag("output", "text");
  if (output != "text" && output != "json") return Refuse("--output must be text or json");
  const bool help = line->flags.count("help") > 0;
  if (line->words.empty()) {
    std::cout << UsageText(commands);
    return help ? kExitOk : kExitRefused;
  }
  size_t used = 0;
  const Command* command = FindCommand(commands, line->words, &used);
  if (command == nullptr) {
    const std::vector<const Command*> group = FindGroup(commands, line->words[0]);
    if (help && line->words.size() == 1 && !group.empty()) {
      std::cout << GroupHelp(line->words[0], group);
      return kExitOk;
    }
    return RefuseUnknown(commands, line->words);
  }
  if (help) {
    std::cout << CommandHelp(*command);
    return kExitOk;
  }
  std::vector<std::string> args(line->words.begin() + static_cast<std::ptrdiff_t>(used), line->words.end());
  if (auto rc = CheckArgsAndFlags(*command, args, line->flags)) return *rc;
  const char* env = std::getenv("FTCTL_SERVER");
  channel::ChannelOptions channel_options;
  channel_options.address = flag("server", env != nullptr && *env != '\0' ? env : kDefaultServer);
  channel_options.tls = line->flags.count("tls") > 0;
  channel_options.tls_ca = flag("tls-ca", "");
  channel_options.tls_cert = flag("tls-cert", "");
  channel_options.tls_key = flag("tls-key", "");
  channel_options.tls_server_name = flag("tls-server-name", "");
  auto token = channel::ResolveToken(flag("token", ""), flag("token-file", ""), "FTCTL_TOKEN");
  if (!token.ok()) return Refuse(token.status().message());
  channel_options.token = *std::move(token);
  auto channel = channel::MakeChannel(channel_options);
  if (!channel.ok()) return Refuse(channel.status().message());
  Invocation inv(commands, *command, std::move(args), std::move(line->flags), output == "json",
                 std::move(channel_options), *std::move(channel));
  return command->handler(inv);
}

int Help(Invocation& inv) {
  const std::vector<std::string>& words = inv.args();
  if (words.empty()) {
    std::cout << UsageText(inv.commands());
    return kExitOk;
  }
  size_t used = 0;
  const Command* command = FindCommand(inv.commands(), words, &used);
  if (command != nullptr && used == words.size()) {
    std::cout << CommandHelp(*command);
    return kExitOk;
  }
  const std::vector<const Command*> group = FindGroup(inv.commands(), words[0]);
  if (command == nullptr && words.size() == 1 && !group.empty()) {
    std::cout << GroupHelp(words[0], group);
    return kExitOk;
  }
  return inv.Refuse(absl::StrCat("unknown command '", absl::StrJoin(words, " "), "' (see ftctl help)"));
}

std::string TimeText(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0) return "-";
  return google::protobuf::util::TimeUtil::ToString(t).substr(0, 19) + "Z";
}

}  // namespace ft::client::ftctl
