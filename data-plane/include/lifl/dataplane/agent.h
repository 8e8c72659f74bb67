// The node agent: owns the node's object store, router, function supervisor, jobs, chains
// and gateway, and the agent's own router endpoint (instance 1) on which aggregators
// publish models and chains return their replies.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "lifl/common/unique_fd.h"
#include "lifl/dataplane/agent_config.h"
#include "lifl/dataplane/chain_manager.h"
#include "lifl/dataplane/endpoint.h"
#include "lifl/dataplane/gateway.h"
#include "lifl/dataplane/job_manager.h"
#include "lifl/dataplane/metrics.h"
#include "lifl/dataplane/object_store.h"
#include "lifl/dataplane/router.h"
#include "lifl/dataplane/supervisor.h"

namespace lifl::dataplane {

class Agent {
 public:
  /// Starts everything; the gateway answers /readyz 200 when this returns.
  /// @param executable the lifl binary, re-executed for function instances
  static Result<std::unique_ptr<Agent>> start(AgentConfig config, Planner planner,
                                              std::string executable);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  uint16_t port() const { return port_; }
  const AgentConfig& config() const { return config_; }
  void stop();

 private:
  explicit Agent(AgentConfig config) : config_(std::move(config)) {}
  void readEndpoint();
  void refreshMetrics();
  nlohmann::json describeInstances() const;
  nlohmann::json describeStore() const;
  void onInstanceDeath(InstanceId id);
  Result<void> joinCluster();

  AgentConfig config_;
  UniqueFd dataDirLock_;  ///< held for the agent's life: one agent per data dir (and store)
  std::unique_ptr<ObjectStore> store_;
  std::unique_ptr<Router> router_;
  std::unique_ptr<Endpoint> endpoint_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Supervisor> supervisor_;
  std::unique_ptr<JobManager> jobs_;
  std::unique_ptr<ChainManager> chains_;
  std::unique_ptr<AccessPolicy> access_;
  std::unique_ptr<Gateway> gateway_;
  std::unique_ptr<ClusterLink> cluster_;  ///< cluster mode only; stopped before the rest
  std::thread reader_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> ready_{false};
  uint16_t port_ = 0;
};

}  // namespace lifl::dataplane
