#ifndef FT_SERVER_WORKERS_SPAWN_ATTRIBUTES_H_
#define FT_SERVER_WORKERS_SPAWN_ATTRIBUTES_H_

#include <signal.h>
#include <spawn.h>

namespace ft::server {

// posix_spawn attributes for the server's children (local workers, tool
// processes). A child inherits its parent's signal mask and ignored
// signals across exec: the server blocks SIGTERM, SIGINT and SIGHUP (its
// signal thread waits for them) and ignores SIGPIPE and SIGXFSZ, and a
// worker started with SIGTERM blocked could never be preempted. So the
// child starts with nothing blocked and those signals at their defaults.
class SpawnAttributes {
 public:
  SpawnAttributes() {
    posix_spawnattr_init(&attr_);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr_, &none);
    sigset_t defaults;
    sigemptyset(&defaults);
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGXFSZ}) sigaddset(&defaults, sig);
    posix_spawnattr_setsigdefault(&attr_, &defaults);
    posix_spawnattr_setflags(&attr_, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  }
  ~SpawnAttributes() { posix_spawnattr_destroy(&attr_); }
  SpawnAttributes(const SpawnAttributes&) = delete;
  SpawnAttributes& operator=(const SpawnAttributes&) = delete;

  const posix_spawnattr_t* get() const { return &attr_; }

 private:
  posix_spawnattr_t attr_;
};

}  // namespace ft::server

#endif  // FT_SERVER_WORKERS_SPAWN_ATTRIBUTES_H_
