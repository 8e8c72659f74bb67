// The function supervisor: function instances are child processes of the agent, pre-started
// in a warm pool and attached to the router. It hands instances out (a cold start when the
// pool is empty, counted), takes them back, watches each through a pidfd and reports deaths
// so that the agent can reclaim what a dead instance held.
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "lifl/common/descriptor.h"
#include "lifl/common/epoll_set.h"
#include "lifl/common/error.h"
#include "lifl/common/unique_fd.h"
#include "lifl/dataplane/endpoint.h"
#include "lifl/dataplane/object_store.h"
#include "lifl/dataplane/router.h"

namespace lifl::dataplane {

struct InstanceStatus {
  InstanceId id = 0;
  pid_t pid = 0;
  bool busy = false;
  std::string function;
  uint64_t processed = 0;  ///< descriptors the instance has handled
};

struct SupervisorStats {
  uint64_t warm = 0;
  uint64_t busy = 0;
  uint64_t coldStarts = 0;
  uint64_t deaths = 0;
  uint64_t retired = 0;  ///< idle instances beyond the warm pool, stopped (scale-down)
};

class Supervisor {
 public:
  using DeathHandler = std::function<void(InstanceId id, pid_t pid, int status)>;

  /// @param executable the lifl binary, re-executed as `lifl instance ...`
  Supervisor(Router& router, ObjectStore& store, Endpoint& agentEndpoint, std::string executable,
             uint32_t warmTarget);
  ~Supervisor();

  void onDeath(DeathHandler handler) { onDeath_ = std::move(handler); }
  /// Pre-starts the warm pool and starts watching children.
  Result<void> start();
  /// New instance ids start above `id` (an adopted store holds a previous agent's ids).
  void startIdsAbove(InstanceId id) { nextId_ = std::max(nextId_, id + 1); }
  /// Takes an idle instance out of the warm pool, starting one (a counted cold start) when
  /// none is warm. The instance has no function until assign().
  Result<InstanceId> reserve();
  /// Sends `function` with `params` to the instance; it replaces what the instance ran.
  Result<void> assign(InstanceId id, const std::string& function, const nlohmann::json& params);
  /// reserve() + assign().
  Result<InstanceId> acquire(const std::string& function, const nlohmann::json& params);
  /// Returns an instance to the warm pool. Idle instances beyond the pool's target exit once
  /// they have been idle for the keep-alive time (scale-down), a few at a time.
  /// @param tellInstance send it `Release`, which frees what it still owns when it reads it.
  ///        False for an instance known to own nothing (a leaf that reported `Done`): it may
  ///        be reserved again, and sent updates it owns, before it reads a `Release`.
  void release(InstanceId id, bool tellInstance = true);
  void setKeepAlive(double seconds) { keepAliveSeconds_ = seconds; }
  /// Instances switch to this user and group before they drop their capabilities
  /// (functions.user); unset, they keep the agent's.
  void setInstanceUser(uint32_t uid, uint32_t gid) { instanceUser_ = {uid, gid}; }
  /// Stops reacting to deaths and refuses new instances (first step of a shutdown).
  void beginShutdown() { stopping_ = true; }
  /// Kills every instance and waits for them (bounded).
  void stop();

  std::vector<InstanceStatus> instances() const;
  SupervisorStats stats() const;
  pid_t pidOf(InstanceId id) const;
  /// Descriptors the instance has handled (its runtime's counter in the store).
  uint64_t processed(InstanceId id) const;
  /// Generations of the store objects the supervisor itself holds (the counters).
  std::vector<uint64_t> heldObjects() const;

 private:
  struct Child {
    pid_t pid = 0;
    UniqueFd pidfd;
    bool busy = false;
    bool retiring = false;  ///< told to exit: beyond the warm pool
    std::string function;
    std::optional<ObjectRef> processed;  ///< the instance's handled-descriptor counter
    std::chrono::steady_clock::time_point idleSince;
  };
  /// Stops idle instances beyond the warm target that outlived the keep-alive.
  void retireIdle();
  uint64_t processedLocked(const Child& c) const;
  void forget(Child& c);
  Result<InstanceId> spawnLocked();
  void watch();
  void reap(InstanceId id);
  /// The isolation group of what `params` assign (the router's): one per job and one per
  /// chain; anything else a group of its own instance.
  uint32_t groupOfLocked(InstanceId id, const nlohmann::json& params);

  Router& router_;
  ObjectStore& store_;
  Endpoint& endpoint_;
  std::string executable_;
  std::optional<std::pair<uint32_t, uint32_t>> instanceUser_;
  uint32_t warmTarget_;
  double keepAliveSeconds_ = 1;
  DeathHandler onDeath_;

  mutable std::mutex mutex_;
  std::map<InstanceId, Child> children_;
  InstanceId nextId_ = kFirstFunctionInstance;
  std::map<std::string, uint32_t> groups_;  ///< "job:<slot>", "chain:<name>" -> group
  uint32_t nextGroup_ = 1;
  uint64_t coldStarts_ = 0;
  uint64_t deaths_ = 0;
  uint64_t retired_ = 0;
  EpollSet epoll_;  ///< pidfds of the children
  std::atomic<bool> stopping_{false};
  bool stopped_ = false;
  std::thread watcher_;
};

}  // namespace lifl::dataplane
