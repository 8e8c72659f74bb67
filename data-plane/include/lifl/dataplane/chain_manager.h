// Function chains declared in the agent's config: each hop is a function instance whose
// assignment names the next hop; the last hop answers the agent. An invocation writes the
// event into the store once and sends its descriptor to the first hop.
//
// Hops scale like the aggregators' leaves, each up to its `max_instances`:
// - the first hop from the eBPF router's counters (descriptors delivered to an instance minus
//   those it has handled): an invocation goes to the instance with the shortest queue, and
//   when even that queue has reached `functions.scale_up_queue_depth` another instance is
//   taken from the warm pool;
// - a later hop allowed more than one instance is routed by the agent: the hop before sends
//   its events to the agent, which gives each to the instance with the fewest requests in
//   flight (a decode stage holds its requests until they finish, so its queue says little),
//   adding one when even that has `scale_up_queue_depth` in flight.
// An added instance given nothing for `functions.idle_seconds` goes back to the pool.
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
  std::vector<uint32_t> maxInstances;                ///< per hop; 1 where absent
  /// The first hop holds each request until it answers (a decode node's decode stage), so
  /// its queue says little: it is picked, and scaled, by requests in flight instead.
  bool entryHolds = false;
  uint32_t maxOf(size_t hop) const { return hop < maxInstances.size() ? maxInstances[hop] : 1; }
  /// The hop's events come through the agent, which picks one of its instances.
  bool routed(size_t hop) const { return hop > 0 && maxOf(hop) > 1; }
};

/// The chain that serves POST /v1/completions.
inline constexpr const char* kLlmChain = "llm";

/// The model a node's chains serve: the "llm" chain's model_name ("lifl" where it names
/// none, as the prefill stage calls it); "" without that chain.
inline std::string servedModel(const std::vector<ChainSpec>& chains) {
  for (const auto& c : chains)
    if (c.name == kLlmChain) return c.params.value("model_name", std::string("lifl"));
  return "";
}
/// The stages of the model the "llm" chain runs here: "both", "prefill" or "decode"
/// (lifl agent --model-role).
inline std::string servedModelRole(const std::vector<ChainSpec>& chains) {
  for (const auto& c : chains)
    if (c.name == kLlmChain) return c.params.value("role", std::string("both"));
  return "both";
}

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
  /// Instances of a hop of the chain (1 up to its max_instances; 0: no such chain or hop).
  size_t instances(const std::string& name, size_t hop) const;
  /// An event a hop sent to the agent: given to an instance of the next hop (routed hops).
  void route(const Descriptor& d);
  void forget(uint64_t correlation);
  void onReply(const Descriptor& d);
  /// One piece of a streamed reply: kept for the waiter, who is woken.
  void onStream(const Descriptor& d);

 private:
  struct Instance {
    InstanceId id;
    std::chrono::steady_clock::time_point lastPicked;
    uint32_t inFlight = 0;  ///< routed requests not yet answered
  };
  using Pool = std::vector<Instance>;  ///< a hop's instances; the first is never scaled away

  Result<void> deployLocked(size_t chain);
  nlohmann::json paramsLocked(size_t chain, size_t hop) const;
  Result<InstanceId> addLocked(size_t chain, size_t hop);
  /// The first-hop instance an invocation goes to, scaling up as the queues say.
  Result<InstanceId> pickLocked(size_t chain);
  /// The instance of a routed hop with the fewest requests in flight, scaling up as they say.
  Result<InstanceId> routeLocked(size_t chain, size_t hop);
  /// Gives back the added instances of a hop given nothing for idle_seconds and holding no
  /// work, but `picked`, which has just been given some.
  void trimLocked(size_t chain, size_t hop, InstanceId picked);
  void releaseLocked(size_t chain);
  void settleLocked(uint64_t correlation);

  ObjectStore& store_;
  Endpoint& endpoint_;
  Supervisor& supervisor_;
  mutable std::mutex mutex_;
  std::vector<ChainSpec> chains_;
  std::vector<std::vector<Pool>> pools_;  ///< [chain][hop]
  QueueProbe queue_;
  uint32_t scaleUpDepth_ = 4;
  double idleSeconds_ = 30;
  std::map<uint64_t, std::shared_ptr<ChainCall>> pending_;
  std::map<uint64_t, InstanceId> routedTo_;  ///< correlation -> the routed instance holding it
  uint64_t nextCorrelation_ = 1;
};

}  // namespace lifl::dataplane
