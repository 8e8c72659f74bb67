// Function chains declared in the agent's config: each hop is a function instance whose
// assignment names the next hop; the last hop answers the agent. An invocation writes the
// event into the store once and sends its descriptor to the first hop.
//
// The first hop scales like the aggregators' leaves: from the eBPF router's counters (the
// descriptors delivered to an instance minus those it has handled), an invocation goes to the
// instance with the shortest queue, and when even that queue has reached
// `functions.scale_up_queue_depth` another instance is taken from the warm pool, up to the
// chain's `max_instances`. An added instance that has been given nothing for
// `functions.idle_seconds` goes back to the pool. The later hops stay single (the LLM decode
// stage batches every sequence in one instance).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lifl/dataplane/endpoint.h"
#include "lifl/dataplane/object_store.h"
#include "lifl/dataplane/supervisor.h"

namespace lifl::dataplane {

struct ChainSpec {
  std::string name;
  std::vector<std::string> functions;
  nlohmann::json params = nlohmann::json::object();  ///< given to every hop with its position
  uint32_t maxInstances = 1;                         ///< of the first hop
};

/// Descriptors delivered to an instance and not yet handled (the agent's probe).
using QueueProbe = std::function<uint64_t(InstanceId)>;

/// The outcome of one invocation, filled in by the agent's endpoint thread.
struct ChainCall {
  std::mutex mutex;
  bool done = false;
  Descriptor reply{};
  std::vector<Descriptor> pieces;  ///< streamed pieces not yet taken by the waiter
  std::function<void()> wake;      ///< set by the waiter; called on each piece and when done
};

class ChainManager {
 public:
  ChainManager(ObjectStore& store, Endpoint& endpoint, Supervisor& supervisor);
  /// Scaling of the first hops: without a probe they stay at one instance.
  void setAutoscale(QueueProbe probe, uint32_t scaleUpDepth, double idleSeconds);

  /// Assigns instances to every hop of every chain.
  Result<void> deploy(std::vector<ChainSpec> chains);
  bool owns(InstanceId id) const;
  /// Re-deploys the chain that contained a dead instance.
  void onInstanceDeath(InstanceId id);

  /// Sends an event object (already written, owned by the first hop) down chain `name`.
  Result<uint64_t> invoke(const std::string& name, ObjectRef event,
                          std::shared_ptr<ChainCall> call);
  /// First hop of the chain (the event's owner), or 404.
  Result<InstanceId> entry(const std::string& name) const;
  /// Instances of the chain's first hop (1 up to max_instances).
  size_t entryInstances(const std::string& name) const;
  void forget(uint64_t correlation);
  void onReply(const Descriptor& d);
  /// One piece of a streamed reply: kept for the waiter, who is woken.
  void onStream(const Descriptor& d);

 private:
  Result<void> deployLocked(size_t chain);
  /// The first-hop instance an invocation goes to, scaling up or down as the queues say.
  Result<InstanceId> pickLocked(size_t chain);
  void releaseAddedLocked(size_t chain);

  ObjectStore& store_;
  Endpoint& endpoint_;
  Supervisor& supervisor_;
  mutable std::mutex mutex_;
  std::vector<ChainSpec> chains_;
  std::vector<std::vector<InstanceId>> hops_;
  struct Added {
    InstanceId id;
    std::chrono::steady_clock::time_point lastPicked;
  };
  std::vector<std::vector<Added>> added_;  ///< first-hop instances beyond hops_[c][0]
  QueueProbe queue_;
  uint32_t scaleUpDepth_ = 4;
  double idleSeconds_ = 30;
  std::map<uint64_t, std::shared_ptr<ChainCall>> pending_;
  uint64_t nextCorrelation_ = 1;
};

}  // namespace lifl::dataplane
