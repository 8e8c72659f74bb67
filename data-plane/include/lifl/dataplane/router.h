// The on-node router joins function instances: each instance owns one endpoint and
// sends/receives 64-byte descriptors on it. Three implementations sit behind this interface:
// the eBPF sk_msg router (the product: each instance a stream socket, descriptors redirected
// in the kernel, no userspace hop), a userspace relay (hosts without BPF, and the benchmark
// baseline), and DPDK rings in hugepage memory polled by the instances (dpdk_router.cc:
// faster per hop, for latency-critical chains, at the cost of polling).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "lifl/common/descriptor.h"
#include "lifl/common/error.h"
#include "lifl/common/unique_fd.h"
#include "lifl/dataplane/endpoint.h"
#include "lifl/ebpf/router_abi.h"

namespace lifl::dataplane {

struct RouteCounters {
  uint64_t deliveredMsgs = 0;  ///< descriptors delivered into the instance
  uint64_t deliveredBytes = 0;
  uint64_t sentMsgs = 0;     ///< descriptors the instance sent
  uint64_t droppedMsgs = 0;  ///< sent to a destination that is not attached
};

enum class RouterKind { Ebpf, Userspace, Dpdk };

/// How a DPDK endpoint waits for its next descriptor (docs/config.md `dpdk:`).
enum class DpdkPolling {
  Busy,      ///< polls its ring without end: the lowest latency, a core per instance
  Adaptive,  ///< polls for `spinMicros`, then sleeps until a sender wakes it
};

struct RouterOptions {
  /// DPDK: the node's --file-prefix (its hugepage files and runtime directory), unique per
  /// agent on a machine.
  std::string dpdkPrefix = "lifl";
  DpdkPolling dpdkPolling = DpdkPolling::Adaptive;
  uint32_t spinMicros = 50;
};

inline constexpr uint32_t kGroupNone = LIFL_GROUP_NONE;
inline constexpr uint32_t kGroupAny = LIFL_GROUP_ANY;  ///< the agent's

/// The agent reaches every instance and every instance reaches it; other instances reach
/// only their own group's (the rule the eBPF program applies, ebpf/router_helpers.h).
inline bool mayReach(uint32_t from, uint32_t to) {
  if (from == kGroupAny || to == kGroupAny) return true;
  return from != kGroupNone && from == to;
}

class Router {
 public:
  virtual ~Router() = default;
  virtual RouterKind kind() const = 0;
  std::string_view name() const {
    return kind() == RouterKind::Ebpf ? "ebpf" : kind() == RouterKind::Dpdk ? "dpdk" : "userspace";
  }
  /// Attaches instance `id` and returns the socket it sends and receives descriptors on
  /// (the DPDK router: no socket, an invalid fd; the instance opens its ring by
  /// endpointArgs()). Attaching an id again replaces its previous endpoint (a restarted
  /// instance).
  virtual Result<UniqueFd> attach(InstanceId id) = 0;
  /// Attaches `id` and opens its endpoint in this process (the agent's own).
  virtual Result<std::unique_ptr<Endpoint>> attachHere(InstanceId id) {
    LIFL_TRY(fd, attach(id));
    return std::unique_ptr<Endpoint>(std::make_unique<SocketEndpoint>(std::move(fd), id));
  }
  /// What `lifl instance` needs on its command line to open an endpoint with no socket.
  virtual std::vector<std::string> endpointArgs() const { return {}; }
  /// Removes every entry the router holds for `id`. Idempotent.
  virtual void detach(InstanceId id) = 0;
  /// Puts `id` in an isolation group: it then reaches, and is reached by, only the agent and
  /// instances of the same group (kGroupNone: the agent only). An attached instance starts in
  /// kGroupNone; the agent (kAgentInstance) is in every group.
  virtual void setGroup(InstanceId id, uint32_t group) = 0;
  virtual RouteCounters counters(InstanceId id) const = 0;
};

/// Builds the router named by `kind`: "ebpf" (needs root and BPF), "userspace", or "dpdk"
/// (a build with DPDK, and hugepages).
Result<std::unique_ptr<Router>> makeRouter(std::string_view kind,
                                           const RouterOptions& options = {});
Result<std::unique_ptr<Router>> makeEbpfRouter();
Result<std::unique_ptr<Router>> makeUserspaceRouter();
/// The DPDK router: this process becomes the node's DPDK primary.
Result<std::unique_ptr<Router>> makeDpdkRouter(const RouterOptions& options);
/// An instance's endpoint on the DPDK router of the node whose prefix is `prefix` (this
/// process becomes a DPDK secondary).
Result<std::unique_ptr<Endpoint>> openDpdkEndpoint(const std::string& prefix, InstanceId id);

}  // namespace lifl::dataplane
