// The eBPF router: ebpf/router.bpf.c attached as the SK_MSG verdict of a SOCKHASH keyed by
// instance id. Each attached instance gets one end of a loopback TCP connection; that
// socket is inserted in the SOCKHASH, so what the instance sends is redirected by the
// kernel into the destination instance's receive queue. The agent keeps the other end to
// hold the connection established; the only bytes that reach it are dead letters
// (descriptors whose destination was gone), which a drain thread reads and discards.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "lifl/common/epoll_set.h"
#include "lifl/common/log.h"
#include "lifl/dataplane/router.h"
#include "router.skel.h"

namespace lifl::dataplane {
namespace {

static_assert(sizeof(lifl_route_counters) == 32, "counter ABI");

struct SkeletonDeleter {
  void operator()(router_bpf* s) const { router_bpf__destroy(s); }
};
using Skeleton = std::unique_ptr<router_bpf, SkeletonDeleter>;

class EbpfRouter final : public Router {
 public:
  static Result<std::unique_ptr<Router>> create() {
    Skeleton skel(router_bpf__open());
    if (!skel) return internal("bpf_open_failed", "cannot open the router BPF object");
    if (int err = router_bpf__load(skel.get()))
      return internal("bpf_load_failed",
                      std::string("cannot load the router BPF program (root and BPF needed): ") +
                          std::strerror(-err));
    int prog = bpf_program__fd(skel->progs.lifl_route);
    int socks = bpf_map__fd(skel->maps.lifl_socks);
    if (bpf_prog_attach(prog, socks, BPF_SK_MSG_VERDICT, 0) != 0)
      return systemError("attach sk_msg verdict to the sockhash", errno);
    UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listener) return systemError("socket", errno);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(listener.get(), 64) != 0)
      return systemError("bind/listen router listener", errno);
    socklen_t len = sizeof(addr);
    ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len);
    auto router =
        std::unique_ptr<EbpfRouter>(new EbpfRouter(std::move(skel), std::move(listener), addr));
    return std::unique_ptr<Router>(std::move(router));
  }

  RouterKind kind() const override { return RouterKind::Ebpf; }

  Result<UniqueFd> attach(InstanceId id) override {
    std::lock_guard lock(mutex_);
    UniqueFd sock(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!sock) return systemError("socket", errno);
    if (::connect(sock.get(), reinterpret_cast<const sockaddr*>(&listenAddr_),
                  sizeof(listenAddr_)) != 0)
      return systemError("connect to router listener", errno);
    UniqueFd peer(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!peer) return systemError("accept router connection", errno);
    int one = 1;
    ::setsockopt(sock.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    uint32_t key = id;
    uint64_t value = static_cast<uint64_t>(sock.get());
    sockaddr_in local{};
    socklen_t localLen = sizeof(local);
    if (::getsockname(sock.get(), reinterpret_cast<sockaddr*>(&local), &localLen) != 0)
      return systemError("getsockname of instance " + std::to_string(id), errno);
    uint32_t port = ntohs(local.sin_port);
    if (auto old = ports_.find(id); old != ports_.end()) {  // a restarted instance
      bpf_map_delete_elem(portGroupsFd(), &old->second);
      ports_.erase(old);
    }
    const uint32_t group = id == kAgentInstance ? kGroupAny : kGroupNone;
    if (bpf_map_update_elem(portGroupsFd(), &port, &group, BPF_ANY) != 0 ||
        bpf_map_update_elem(instanceGroupsFd(), &key, &group, BPF_ANY) != 0)
      return systemError("set the group of instance " + std::to_string(id), errno);
    ports_[id] = port;
    if (bpf_map_update_elem(countersFd(), &key, zeroCounters().data(), BPF_ANY) != 0)
      return systemError("create counters for instance " + std::to_string(id), errno);
    if (bpf_map_update_elem(socksFd(), &key, &value, BPF_ANY) != 0)
      return systemError("insert instance " + std::to_string(id) + " in the sockhash", errno);
    (void)epoll_.add(peer.get(), id);  // unwatched: dead letters would only fill its buffer
    peers_[id] = std::move(peer);
    return sock;
  }

  ~EbpfRouter() override {
    stop_ = true;
    epoll_.wake();
    if (drain_.joinable()) drain_.join();
  }

  void detach(InstanceId id) override {
    std::lock_guard lock(mutex_);
    uint32_t key = id;
    bpf_map_delete_elem(socksFd(), &key);  // ENOENT when the socket already closed: fine
    bpf_map_delete_elem(countersFd(), &key);
    bpf_map_delete_elem(instanceGroupsFd(), &key);
    if (auto it = ports_.find(id); it != ports_.end()) {
      bpf_map_delete_elem(portGroupsFd(), &it->second);
      ports_.erase(it);
    }
    if (auto it = peers_.find(id); it != peers_.end()) {
      epoll_.remove(it->second.get());
      peers_.erase(it);
    }
  }

  void setGroup(InstanceId id, uint32_t group) override {
    std::lock_guard lock(mutex_);
    auto it = ports_.find(id);
    if (it == ports_.end() || id == kAgentInstance) return;
    uint32_t key = id;
    bpf_map_update_elem(portGroupsFd(), &it->second, &group, BPF_ANY);
    bpf_map_update_elem(instanceGroupsFd(), &key, &group, BPF_ANY);
  }

  RouteCounters counters(InstanceId id) const override {
    uint32_t key = id;
    std::vector<lifl_route_counters> perCpu(static_cast<size_t>(libbpf_num_possible_cpus()));
    RouteCounters out;
    if (bpf_map_lookup_elem(countersFd(), &key, perCpu.data()) != 0) return out;
    for (const auto& c : perCpu) {
      out.deliveredMsgs += c.delivered_msgs;
      out.deliveredBytes += c.delivered_bytes;
      out.sentMsgs += c.sent_msgs;
      out.droppedMsgs += c.dropped_msgs;
    }
    return out;
  }

 private:
  EbpfRouter(Skeleton skel, UniqueFd listener, sockaddr_in addr)
      : skel_(std::move(skel)), listener_(std::move(listener)), listenAddr_(addr) {
    drain_ = std::thread([this] { drainDeadLetters(); });
  }

  // Dead letters were already counted by the BPF program (dropped_msgs of the sender).
  void drainDeadLetters() {
    char sink[4096];
    while (!stop_) {
      epoll_.wait(500, [&](uint64_t key) {
        std::lock_guard lock(mutex_);
        auto it = peers_.find(static_cast<InstanceId>(key));
        if (it == peers_.end()) return;
        ssize_t r = ::recv(it->second.get(), sink, sizeof(sink), MSG_DONTWAIT);
        if (r == 0)
          epoll_.remove(it->second.get());  // the instance is gone
        else if (r > 0)
          LIFL_DEBUG("dead letters from instance " << it->first << ": " << r / 64);
      });
    }
  }

  int socksFd() const { return bpf_map__fd(skel_->maps.lifl_socks); }
  int countersFd() const { return bpf_map__fd(skel_->maps.lifl_counters); }
  int portGroupsFd() const { return bpf_map__fd(skel_->maps.lifl_port_grp); }
  int instanceGroupsFd() const { return bpf_map__fd(skel_->maps.lifl_inst_grp); }
  static const std::vector<lifl_route_counters>& zeroCounters() {
    static const std::vector<lifl_route_counters> zeros(
        static_cast<size_t>(libbpf_num_possible_cpus()));
    return zeros;
  }

  Skeleton skel_;  // destroyed last among BPF resources: detaches the program and frees maps
  UniqueFd listener_;
  sockaddr_in listenAddr_;
  mutable std::mutex mutex_;
  std::unordered_map<InstanceId, UniqueFd> peers_;
  std::unordered_map<InstanceId, uint32_t> ports_;  ///< instance -> its socket's local port
  EpollSet epoll_;
  std::atomic<bool> stop_{false};
  std::thread drain_;
};

}  // namespace

Result<std::unique_ptr<Router>> makeEbpfRouter() { return EbpfRouter::create(); }

}  // namespace lifl::dataplane
