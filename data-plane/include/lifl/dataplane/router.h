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

namespace lifl::dataplane {

struct RouteCounters {
  uint64_t deliveredMsgs = 0;  ///< descriptors delivered into the instance
  uint64_t deliveredBytes = 0;
  uint64_t sentMsgs = 0;     ///< descriptors the instance sent
  uint64_t droppedMsgs = 0;  ///< sent to a destination that is not attached
};

enum class RouterKind { Ebpf, Userspace };

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
  virtual RouteCounters counters(InstanceId id) const = 0;
};

/// Builds the router named by `kind`: "ebpf" (needs root and BPF) or "userspace".
Result<std::unique_ptr<Router>> makeRouter(std::string_view kind);
Result<std::unique_ptr<Router>> makeEbpfRouter();
Result<std::unique_ptr<Router>> makeUserspaceRouter();

}  // namespace lifl::dataplane
