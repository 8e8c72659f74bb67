// The userspace router: every instance gets one end of a Unix stream socketpair; one relay
// thread reads whole descriptors from the agent's ends and writes each to its destination's
// end. This is the sidecar/proxy hop the eBPF router removes; it exists for hosts without
// BPF and as the benchmark baseline.
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "lifl/common/epoll_set.h"
#include "lifl/common/log.h"
#include "lifl/dataplane/router.h"

namespace lifl::dataplane {
namespace {

bool writeAll(int fd, const std::byte* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

class UserspaceRouter final : public Router {
 public:
  UserspaceRouter() {
    relay_ = std::thread([this] { run(); });
  }
  ~UserspaceRouter() override {
    stop_ = true;
    epoll_.wake();
    relay_.join();
  }

  RouterKind kind() const override { return RouterKind::Userspace; }

  Result<UniqueFd> attach(InstanceId id) override {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
      return systemError("socketpair", errno);
    UniqueFd instanceEnd(sv[0]);
    auto conn = std::make_shared<Connection>();
    conn->fd.reset(sv[1]);
    conn->id = id;
    std::lock_guard lock(mutex_);
    if (auto old = conns_.find(id); old != conns_.end()) removeLocked(old);
    LIFL_TRYV(epoll_.add(conn->fd.get(), id));
    conns_[id] = std::move(conn);
    groups_[id] = id == kAgentInstance ? kGroupAny : kGroupNone;
    return instanceEnd;
  }

  void detach(InstanceId id) override {
    std::lock_guard lock(mutex_);
    if (auto it = conns_.find(id); it != conns_.end()) removeLocked(it);
    counters_.erase(id);
    groups_.erase(id);
  }

  void setGroup(InstanceId id, uint32_t group) override {
    std::lock_guard lock(mutex_);
    if (auto it = groups_.find(id); it != groups_.end() && id != kAgentInstance) it->second = group;
  }

  RouteCounters counters(InstanceId id) const override {
    std::lock_guard lock(mutex_);
    auto it = counters_.find(id);
    return it == counters_.end() ? RouteCounters{} : it->second;
  }

 private:
  struct Connection {
    UniqueFd fd;
    InstanceId id = 0;
    std::array<std::byte, LIFL_DESCRIPTOR_SIZE * 64> buf;
    size_t used = 0;
  };
  using ConnMap = std::unordered_map<InstanceId, std::shared_ptr<Connection>>;

  void removeLocked(ConnMap::iterator it) {
    epoll_.remove(it->second->fd.get());
    conns_.erase(it);
  }

  void run() {
    while (!stop_) {
      epoll_.wait(500, [this](uint64_t key) {
        std::shared_ptr<Connection> conn;
        {
          std::lock_guard lock(mutex_);
          auto it = conns_.find(static_cast<InstanceId>(key));
          if (it == conns_.end()) return;
          conn = it->second;
        }
        pump(*conn);
      });
    }
  }

  void pump(Connection& c) {
    ssize_t r = ::recv(c.fd.get(), c.buf.data() + c.used, c.buf.size() - c.used, MSG_DONTWAIT);
    if (r <= 0) {
      if (r == 0 || (errno != EAGAIN && errno != EINTR)) detach(c.id);  // the instance exited
      return;
    }
    c.used += static_cast<size_t>(r);
    size_t off = 0;
    for (; c.used - off >= LIFL_DESCRIPTOR_SIZE; off += LIFL_DESCRIPTOR_SIZE) {
      Descriptor d;
      std::memcpy(&d, c.buf.data() + off, sizeof(d));
      forward(c.id, d, c.buf.data() + off);
    }
    std::memmove(c.buf.data(), c.buf.data() + off, c.used - off);
    c.used -= off;
  }

  void forward(InstanceId from, const Descriptor& d, const std::byte* raw) {
    std::shared_ptr<Connection> dst;
    {
      std::lock_guard lock(mutex_);
      counters_[from].sentMsgs++;
      if (auto it = conns_.find(d.dst); it != conns_.end()) dst = it->second;
      const auto sender = groups_.find(from), to = groups_.find(d.dst);
      if (dst &&
          (sender == groups_.end() || to == groups_.end() || !mayReach(sender->second, to->second)))
        dst.reset();  // another group's instance: refused like a missing one
      if (!dst) {
        counters_[from].droppedMsgs++;
        return;
      }
      counters_[d.dst].deliveredMsgs++;
      counters_[d.dst].deliveredBytes += LIFL_DESCRIPTOR_SIZE;
    }
    if (!writeAll(dst->fd.get(), raw, LIFL_DESCRIPTOR_SIZE))
      LIFL_WARN("userspace router: delivery to instance " << d.dst << " failed");
  }

  EpollSet epoll_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mutex_;
  ConnMap conns_;
  std::unordered_map<InstanceId, RouteCounters> counters_;
  std::unordered_map<InstanceId, uint32_t> groups_;
  std::thread relay_;
};

}  // namespace

Result<std::unique_ptr<Router>> makeUserspaceRouter() {
  return std::unique_ptr<Router>(std::make_unique<UserspaceRouter>());
}

Result<std::unique_ptr<Router>> makeRouter(std::string_view kind, const RouterOptions& options) {
  if (kind == "ebpf") return makeEbpfRouter();
  if (kind == "userspace") return makeUserspaceRouter();
  if (kind == "dpdk") return makeDpdkRouter(options);
  return badRequest("invalid_config",
                    "router must be ebpf, userspace or dpdk, not " + std::string(kind));
}

}  // namespace lifl::dataplane
