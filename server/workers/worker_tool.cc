#include "server/workers/worker_tool.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/workers/spawn_attributes.h"

extern char** environ;

namespace ft::server {
namespace {

constexpr size_t kMaxOutput = 64 << 20;

}  // namespace

absl::StatusOr<finetune::v1::ToolReply> WorkerTool::Run(const finetune::v1::ToolRequest& request,
                                                        absl::Duration timeout) {
  const std::string tool = request.has_validate() ? "validate" : "predict";
  const std::string input = request.SerializeAsString();
  if (options_.binary.empty() || !std::filesystem::exists(options_.binary)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "this request needs finetune-worker next to finetuned (or --worker-binary); not found at '",
        options_.binary, "'"));
  }
  int in_pipe[2], out_pipe[2], err_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) || pipe2(out_pipe, O_CLOEXEC) || pipe2(err_pipe, O_CLOEXEC)) {
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in_pipe[0], 0);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  std::vector<std::string> argv_s = {options_.binary, absl::StrCat("--tool=", tool),
                                     absl::StrCat("--threads=", options_.threads)};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  const SpawnAttributes attributes;
  const int rc = posix_spawn(&pid, options_.binary.c_str(), &actions, attributes.get(), argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (rc != 0) {
    ::close(in_pipe[1]);
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    return absl::InternalError(absl::StrCat("cannot start finetune-worker: ", std::strerror(rc)));
  }
  // Feed stdin while draining stdout and stderr, so neither side blocks.
  std::string out, err;
  size_t written = 0;
  int in_fd = in_pipe[1];
  if (input.empty()) {
    ::close(in_fd);
    in_fd = -1;
  }
  const absl::Time deadline = absl::Now() + timeout;
  bool timed_out = false;
  int open_fds = 2;
  while (open_fds > 0) {
    pollfd fds[3];
    int n = 0;
    int out_i = -1, err_i = -1, in_i = -1;
    if (out_pipe[0] >= 0) { fds[n] = {out_pipe[0], POLLIN, 0}; out_i = n++; }
    if (err_pipe[0] >= 0) { fds[n] = {err_pipe[0], POLLIN, 0}; err_i = n++; }
    if (in_fd >= 0) { fds[n] = {in_fd, POLLOUT, 0}; in_i = n++; }
    const int64_t wait_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (wait_ms <= 0) {
      timed_out = true;
      break;
    }
    if (::poll(fds, static_cast<nfds_t>(n), static_cast<int>(std::min<int64_t>(wait_ms, 1000))) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    char buf[65536];
    auto drain = [&](int i, int& fd, std::string& dst) {
      if (i < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) return;
      ssize_t got = ::read(fd, buf, sizeof(buf));
      if (got > 0) {
        if (dst.size() < kMaxOutput) dst.append(buf, static_cast<size_t>(got));
      } else {
        ::close(fd);
        fd = -1;
        --open_fds;
      }
    };
    drain(out_i, out_pipe[0], out);
    drain(err_i, err_pipe[0], err);
    if (in_i >= 0 && (fds[in_i].revents & (POLLOUT | POLLERR | POLLHUP))) {
      ssize_t put = ::write(in_fd, input.data() + written, input.size() - written);
      if (put > 0) written += static_cast<size_t>(put);
      if (put < 0 || written == input.size()) {
        ::close(in_fd);
        in_fd = -1;
      }
    }
  }
  for (int fd : {in_fd, out_pipe[0], err_pipe[0]}) {
    if (fd >= 0) ::close(fd);
  }
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (timed_out) {
    return absl::DeadlineExceededError(absl::StrCat("finetune-worker --tool=", tool, " took longer than ",
                                                    absl::FormatDuration(timeout)));
  }
  finetune::v1::ToolReply reply;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !reply.ParseFromString(out)) {
    const std::string how = WIFEXITED(status) ? absl::StrCat("exited with ", WEXITSTATUS(status))
                                              : absl::StrCat("was killed by signal ", WTERMSIG(status));
    return absl::InternalError(absl::StrCat("finetune-worker --tool=", tool, " ", how, " without a reply: ",
                                            err.substr(0, 500)));
  }
  if (reply.code() != 0) {
    const int code = reply.code() > 0 && reply.code() <= 16 ? reply.code() : static_cast<int>(absl::StatusCode::kUnknown);
    return absl::Status(static_cast<absl::StatusCode>(code), reply.message());
  }
  return reply;
}

}  // namespace ft::server
