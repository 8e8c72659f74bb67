// The on-node router joins function instances: each instance owns one stream socket and
// sends/receives 64-byte descriptors on it. Two implementations sit behind this interface:
// the eBPF sk_msg router (the product: descriptors are redirected in the kernel, no
// userspace hop) and a userspace relay (hosts without BPF, and the benchmark baseline).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "lifl/common/descriptor.h"
#include "lifl/common/error.h"
#include "lifl/common/unique_fd.h"
#include "lifl/ebpf/router_abi.h"

namespace lifl::dataplane {

struct RouteCounters {
  uint64_t deliveredMsgs = 0;  ///< descriptors delivered into the instance
  uint64_t deliveredBytes = 0;
  uint64_t sentMsgs = 0;     ///< descriptors the instance sent
  uint64_t droppedMsgs = 0;  ///< sent to a destination that is not attached
};

enum class RouterKind { Ebpf, Userspace };

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
  std::string_view name() const { return kind() == RouterKind::Ebpf ? "ebpf" : "userspace"; }
  /// Attaches instance `id` and returns the socket it sends and receives descriptors on.
  /// Attaching an id again replaces its previous socket (a restarted instance).
  virtual Result<UniqueFd> attach(InstanceId id) = 0;
  /// Removes every entry the router holds for `id`. Idempotent.
  virtual void detach(InstanceId id) = 0;
  /// Puts `id` in an isolation group: it then reaches, and is reached by, only the agent and
  /// instances of the same group (kGroupNone: the agent only). An attached instance starts in
  /// kGroupNone; the agent (kAgentInstance) is in every group.
  virtual void setGroup(InstanceId id, uint32_t group) = 0;
  virtual RouteCounters counters(InstanceId id) const = 0;
};

/// Builds the router named by `kind`: "ebpf" (needs root and BPF) or "userspace".
Result<std::unique_ptr<Router>> makeRouter(std::string_view kind);
Result<std::unique_ptr<Router>> makeEbpfRouter();
Result<std::unique_ptr<Router>> makeUserspaceRouter();

}  // namespace lifl::dataplane
