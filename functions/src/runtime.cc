// The instance process: one event loop on the router socket, single-threaded, so a
// function never needs locks of its own.
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <csignal>

#include "lifl/common/log.h"
#include "lifl/common/scope_exit.h"
#include "lifl/dataplane/router.h"
#include "lifl/functions/held_objects.h"
#include "lifl/functions/sdk.h"

namespace lifl::fn {
namespace {

struct Assignment {
  std::string function;
  nlohmann::json params;
};

Result<Assignment> readAssignment(dataplane::ObjectStore& store, const Descriptor& d) {
  LIFL_TRY(object, store.resolve(d));
  auto doc = nlohmann::json::parse(reinterpret_cast<const char*>(object.data()),
                                   reinterpret_cast<const char*>(object.data()) + object.size(),
                                   nullptr, false);
  store.release(object.handle());
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("function"))
    return badRequest("malformed_assignment", "assignment is not a JSON object with a function");
  return Assignment{doc["function"].get<std::string>(),
                    doc.value("params", nlohmann::json::object())};
}

}  // namespace

int runInstance(const InstanceOptions& options) {
  // Die with the agent: an orphaned instance would hold store objects nobody reclaims.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (options.agentPid && getppid() != options.agentPid) return 0;
  log::setTag("fn-" + std::to_string(options.id));
  log::setLevelFromEnv();

  auto store = dataplane::ObjectStore::open(options.storePath);
  if (!store) {
    LIFL_ERROR(store.error().toString());
    return 2;
  }
  std::unique_ptr<dataplane::Endpoint> opened;
  if (options.dpdkPrefix.empty()) {
    opened = std::make_unique<dataplane::SocketEndpoint>(UniqueFd(options.endpointFd), options.id);
  } else {
    auto ring = dataplane::openDpdkEndpoint(options.dpdkPrefix, options.id);
    if (!ring) {
      LIFL_ERROR(ring.error().toString());
      return 2;
    }
    opened = std::move(ring).value();
  }
  dataplane::Endpoint& endpoint = *opened;
  uint64_t unused = 0;
  uint64_t* processed = &unused;
  if (options.processedCounter) {
    auto counter = store.value()->resolve(*options.processedCounter);
    if (counter && counter.value().size() >= sizeof(uint64_t))
      processed = reinterpret_cast<uint64_t*>(counter.value().data());
  }
  // Counted after each descriptor is handled: delivered - processed is the queue, including
  // the one being worked on.
  auto handled = [&] {
    std::atomic_ref<uint64_t>(*processed).fetch_add(1, std::memory_order_release);
  };
  HeldObjects held(*store.value(), options.id);
  std::unique_ptr<Function> function;
  std::unique_ptr<Context> context;
  std::string functionName;

  bool idle = true;  // nothing handled since the function last heard the queue drain
  for (;;) {
    auto next = endpoint.receive(idle ? -1 : 0);
    if (!next) {
      LIFL_DEBUG("router socket closed: " << next.error().detail);
      return 0;
    }
    if (!next.value()) {  // the queue has drained
      if (function)
        if (auto r = function->onIdle(*context); !r)
          LIFL_WARN(functionName << ": " << r.error().toString());
      idle = !function || !function->hasWork();  // else: look for events, then onIdle again
      continue;
    }
    idle = false;
    const Descriptor& d = *next.value();
    ScopeExit countIt(handled);
    switch (d.kind) {
      case DescriptorKind::Assign: {
        auto assignment = readAssignment(*store.value(), d);
        if (!assignment) {
          LIFL_ERROR(assignment.error().toString());
          break;
        }
        function = FunctionRegistry::global().make(assignment.value().function);
        if (!function) {
          LIFL_ERROR("unknown function " << assignment.value().function);
          break;
        }
        functionName = assignment.value().function;
        context =
            std::make_unique<Context>(*store.value(), endpoint, assignment.value().params, &held);
        LIFL_DEBUG("assigned " << functionName);
        break;
      }
      case DescriptorKind::Release:
        // Back to the pool clean: whatever the role still held (a cancelled round's inputs
        // and accumulator) is freed here, in order after every descriptor it received; what
        // its next peers already sent it is not (held_objects.h).
        function.reset();
        context.reset();
        functionName.clear();
        held.releaseOwned();
        break;
      case DescriptorKind::Shutdown:
        countIt.dismiss();
        return 0;
      default:
        if (!function) {
          LIFL_WARN("no function assigned; dropping " << kindName(d.kind));
          break;
        }
        if (d.hasObject()) held.note({d.offset, d.length, d.generation});
        if (auto r = function->onEvent(*context, d); !r)
          LIFL_WARN(functionName << ": " << r.error().toString());
    }
  }
}

}  // namespace lifl::fn
