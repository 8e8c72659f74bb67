// The node's HTTP gateway (Boost.Beast): API.md's jobs/updates/model surface, function-chain
// invocation, /metrics, /livez, /readyz. Update bodies are read from the socket straight into
// a store object; nothing holds a second copy of a body.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>

#include "lifl/common/access_policy.h"
#include "lifl/common/error.h"
#include "lifl/dataplane/agent_config.h"
#include "lifl/dataplane/chain_manager.h"
#include "lifl/dataplane/cluster_link.h"
#include "lifl/dataplane/job_manager.h"
#include "lifl/dataplane/metrics.h"
#include "lifl/dataplane/object_store.h"

namespace lifl::dataplane {

struct GatewayHooks {
  std::function<bool()> ready;                ///< /readyz
  std::function<void()> refreshMetrics;       ///< called before /metrics is serialised
  std::function<nlohmann::json()> instances;  ///< GET /v1/instances
  std::function<nlohmann::json()> store;      ///< GET /v1/store
  /// Cluster mode: the jobs API goes to the controller, and /v1/cluster/ serves it and the
  /// other agents.
  ClusterLink* cluster = nullptr;
};

class Gateway {
 public:
  Gateway(const AgentConfig& config, JobManager& jobs, ChainManager& chains, ObjectStore& store,
          Metrics& metrics, AccessPolicy& access, GatewayHooks hooks);
  ~Gateway();
  /// Binds and starts serving on the configured threads. @return the bound port.
  Result<uint16_t> start();
  void stop();
  /// Completions this node is serving now (not those it relays to another node).
  uint32_t completionsInFlight() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lifl::dataplane
