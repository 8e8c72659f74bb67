// The function SDK. A function instance is a process the agent pre-starts in its warm pool;
// the runtime gives it an event loop on its router socket, access to the node's object
// store, and emit(). A function only implements onEvent (or, for chain steps, handle()).
// See functions/examples/text_functions.cc for a complete, documented example.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>

#include "lifl/common/descriptor.h"
#include "lifl/common/error.h"
#include "lifl/dataplane/endpoint.h"
#include "lifl/dataplane/event_object.h"
#include "lifl/dataplane/object_store.h"
#include "lifl/functions/held_objects.h"

namespace lifl::fn {

/// What a function sees of its instance.
class Context {
 public:
  /// @param held where the runtime keeps what the instance takes on (its allocations), to
  ///        free at a Release; none outside the runtime
  Context(dataplane::ObjectStore& store, dataplane::Endpoint& endpoint, nlohmann::json params,
          HeldObjects* held = nullptr)
      : store_(store), endpoint_(endpoint), params_(std::move(params)), held_(held) {}

  dataplane::ObjectStore& store() { return store_; }
  InstanceId self() const { return endpoint_.self(); }
  /// The `params` of the instance's assignment (chain position, aggregation role, ...).
  const nlohmann::json& params() const { return params_; }
  /// Sends a descriptor to d.dst through the node's router.
  Result<void> emit(const Descriptor& d) { return endpoint_.send(d); }
  /// A new object owned by this instance (the agent reclaims it if the instance dies).
  Result<dataplane::ObjectRef> allocate(uint64_t bytes, dataplane::ObjectKind kind) {
    auto object = store_.allocate(bytes, kind, self());
    if (object && held_) held_->note(object.value().handle());
    return object;
  }
  /// allocate(), waiting while the store is full (503 store_full) for up to `patience`:
  /// objects are freed as other instances move on, and an aggregator that gave up would
  /// leave the update it was folding unaggregated. The store_full error after that.
  Result<dataplane::ObjectRef> allocateWaiting(
      uint64_t bytes, dataplane::ObjectKind kind,
      std::chrono::milliseconds patience = std::chrono::seconds(30)) {
    const auto giveUp = std::chrono::steady_clock::now() + patience;
    auto pause = std::chrono::milliseconds(1);
    for (;;) {
      auto object = allocate(bytes, kind);
      if (object || object.error().code != "store_full" ||
          std::chrono::steady_clock::now() + pause > giveUp)
        return object;
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::milliseconds(50));
    }
  }

 private:
  dataplane::ObjectStore& store_;
  dataplane::Endpoint& endpoint_;
  nlohmann::json params_;
  HeldObjects* held_;
};

class Function {
 public:
  virtual ~Function() = default;
  /// Called for every descriptor routed to the instance while it holds this function.
  /// An error is logged and, for chain events, answered to the caller as a failure.
  virtual Result<void> onEvent(Context& ctx, const Descriptor& d) = 0;
  /// Called when the instance's queue has drained after one or more events: a function that
  /// defers work to batch what is queued (the aggregator's fused fold) finishes it here.
  virtual Result<void> onIdle(Context&) { return success(); }
  /// True while the function has work of its own between events (a decode loop): the
  /// runtime then keeps calling onIdle, checking for new events between calls.
  virtual bool hasWork() const { return false; }
};

/// Answers the gateway that the request `correlation` failed, with API.md's error body.
Result<void> replyFailure(Context& ctx, uint64_t correlation, uint32_t job, const Error& error);

using dataplane::EventView;
using dataplane::makeEvent;
using dataplane::readEvent;

/// Base for a step of a function chain: one event in, one event out. The runtime resolves
/// the input, calls handle(), sends the output to the next hop (or back to the gateway) and
/// releases the input.
class ChainFunction : public Function {
 public:
  /// Returns the output event's attributes and data. The default attributes are the input's.
  struct Output {
    nlohmann::json attributes;
    std::string data;
  };
  virtual Result<Output> handle(Context& ctx, const EventView& input) = 0;
  Result<void> onEvent(Context& ctx, const Descriptor& d) final;
};

using FunctionFactory = std::function<std::unique_ptr<Function>()>;

/// Name -> factory of every function this binary can run.
class FunctionRegistry {
 public:
  static FunctionRegistry& global();
  void add(const std::string& name, FunctionFactory factory);
  std::unique_ptr<Function> make(const std::string& name) const;
  bool contains(const std::string& name) const { return factories_.count(name) != 0; }

 private:
  std::map<std::string, FunctionFactory> factories_;
};

/// Registration hooks of the built-in function sets (explicit, so static linking keeps them).
void registerExampleFunctions(FunctionRegistry& registry);
void registerFlFunctions(FunctionRegistry& registry);
void registerLlmFunctions(FunctionRegistry& registry);

struct InstanceOptions {
  InstanceId id = 0;
  int endpointFd = -1;     ///< the router's socket, or:
  std::string dpdkPrefix;  ///< the node's DPDK prefix (router: dpdk)
  std::string storePath;
  pid_t agentPid = 0;
  /// A store object (8 bytes used) where the instance counts the descriptors it has
  /// handled; with the router's delivered counter it gives the agent its queue depth.
  std::optional<dataplane::ObjectHandle> processedCounter;
};

/// The instance process's main loop: waits for Assign, runs the assigned function, goes back
/// to the pool on Release, exits on Shutdown or when the agent goes away.
int runInstance(const InstanceOptions& options);

}  // namespace lifl::fn
