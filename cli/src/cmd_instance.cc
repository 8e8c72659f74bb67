#include "lifl/cli/args.h"
#include "lifl/cli/commands.h"
#include "lifl/common/capabilities.h"
#include "lifl/functions/sdk.h"

namespace lifl::cli {

int cmdInstance(int argc, char** argv) {
  auto args = Args::parse(argc, argv, 2);
  if (!args) return fail(args.error());
  // First of all: a function instance holds no privilege, whatever its agent holds. With
  // functions.user it becomes that user (the store segment is its group's), then, as
  // always, it drops every capability.
  if (args.value().has("user")) {
    uint32_t uid = 0, gid = 0;
    if (std::sscanf(args.value().get("user").c_str(), "%u:%u", &uid, &gid) != 2)
      return fail(badRequest("bad_arguments", "--user is UID:GID"));
    if (auto became = becomeUser(uid, gid); !became) return fail(became.error());
  }
  if (auto dropped = dropAllCapabilities(); !dropped) return fail(dropped.error());
  if (args.value().wantsHelp()) {
    std::puts(
        "usage: lifl instance --id N (--fd FD | --dpdk PREFIX) --store PATH --agent-pid PID\n"
        "                     [--processed OFFSET:LENGTH:GENERATION] [--user UID:GID]\n"
        "Started by the agent: runs one function instance of the warm pool. Not for users.");
    return 0;
  }
  auto id = args.value().getUnsigned("id", 0);
  auto fd = args.value().getUnsigned("fd", 3);
  auto agent = args.value().getUnsigned("agent-pid", 0);
  if (!id || !fd || !agent || id.value() == 0 || !args.value().has("store"))
    return fail(badRequest("bad_arguments", "instance needs --id, --fd, --store and --agent-pid"));
  auto& registry = fn::FunctionRegistry::global();
  fn::registerExampleFunctions(registry);
  fn::registerFlFunctions(registry);
  fn::registerLlmFunctions(registry);
  fn::InstanceOptions options{static_cast<InstanceId>(id.value()),
                              static_cast<int>(fd.value()),
                              args.value().get("dpdk"),
                              args.value().get("store"),
                              static_cast<pid_t>(agent.value()),
                              std::nullopt};
  if (args.value().has("processed")) {
    dataplane::ObjectHandle h{};
    if (std::sscanf(args.value().get("processed").c_str(), "%lu:%lu:%lu", &h.offset, &h.length,
                    &h.generation) != 3)
      return fail(badRequest("bad_arguments", "--processed is OFFSET:LENGTH:GENERATION"));
    options.processedCounter = h;
  }
  return fn::runInstance(options);
}

}  // namespace lifl::cli
