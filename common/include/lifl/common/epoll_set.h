// An epoll set with a built-in wake-up (an eventfd), for the agent's watcher threads: the
// supervisor (pidfds), the userspace router (instance sockets) and the eBPF router's
// dead-letter drain. wake() makes a blocked wait() return so its thread can stop.
#pragma once

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "lifl/common/error.h"
#include "lifl/common/unique_fd.h"

namespace lifl {

class EpollSet {
 public:
  EpollSet() : epoll_(::epoll_create1(EPOLL_CLOEXEC)), wake_(::eventfd(0, EFD_CLOEXEC)) {
    LIFL_CHECK(epoll_ && wake_, "epoll_create1/eventfd failed");
    LIFL_CHECK(add(wake_.get(), kWakeKey), "cannot watch the wake-up eventfd");
  }

  /// Watches `fd` for input; wait() reports it as `key` (any value but ~0).
  Result<void> add(int fd, uint64_t key) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = key;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
      return systemError("epoll_ctl add", errno);
    return success();
  }
  void remove(int fd) { ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr); }
  void wake() {
    uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof(one));
  }

  /// Waits up to `timeoutMs` and calls onReady(key) for each ready fd.
  template <class F>
  void wait(int timeoutMs, F&& onReady) {
    epoll_event events[32];
    const int n = ::epoll_wait(epoll_.get(), events, 32, timeoutMs);
    for (int i = 0; i < n; ++i)
      if (events[i].data.u64 != kWakeKey) onReady(events[i].data.u64);
  }

 private:
  static constexpr uint64_t kWakeKey = ~0ull;
  UniqueFd epoll_;
  UniqueFd wake_;
};

}  // namespace lifl
