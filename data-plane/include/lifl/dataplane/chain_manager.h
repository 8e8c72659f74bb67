// Function chains declared in the agent's config: each hop is a function instance whose
// assignment names the next hop; the last hop answers the agent. An invocation writes the
// event into the store once and sends its descriptor to the first hop.
#pragma once

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
};

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
  void forget(uint64_t correlation);
  void onReply(const Descriptor& d);
  /// One piece of a streamed reply: kept for the waiter, who is woken.
  void onStream(const Descriptor& d);

 private:
  Result<void> deployLocked(size_t chain);

  ObjectStore& store_;
  Endpoint& endpoint_;
  Supervisor& supervisor_;
  mutable std::mutex mutex_;
  std::vector<ChainSpec> chains_;
  std::vector<std::vector<InstanceId>> hops_;
  std::map<uint64_t, std::shared_ptr<ChainCall>> pending_;
  uint64_t nextCorrelation_ = 1;
};

}  // namespace lifl::dataplane
