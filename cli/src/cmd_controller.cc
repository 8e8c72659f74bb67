#include <signal.h>

#include <cstdio>

#include "lifl/cli/args.h"
#include "lifl/cli/commands.h"
#include "lifl/cli/embedded.h"
#include "lifl/common/log.h"
#include "lifl/control/controller.h"

namespace lifl::cli {

namespace {
constexpr const char* kControllerHelp =
    "usage: lifl controller [--port 8090] [--bind 127.0.0.1] [--data-dir DIR] [--config FILE]\n"
    "                       [--advertise URL] [--port-file FILE]\n"
    "\n"
    "Runs the cluster controller until SIGINT/SIGTERM: the jobs API of API.md, the node\n"
    "registry (GET/POST /v1/nodes), admission of every update, round close and deadlines.\n"
    "Node agents join it with `lifl agent --controller URL`. Job state is kept in the data\n"
    "dir, so a restarted controller resumes every job at its round. Flags override the YAML\n"
    "config (docs/config.md).";
}  // namespace

int cmdController(int argc, char** argv) {
  auto parsed = Args::parse(argc, argv, 2);
  if (!parsed) return fail(parsed.error());
  const Args& args = parsed.value();
  if (args.wantsHelp()) {
    std::puts(kControllerHelp);
    return 0;
  }
  const sigset_t stopSignals = blockStopSignals();

  auto config = control::loadControllerConfig(args.get("config"));
  if (!config) return fail(config.error());
  auto& c = config.value();
  auto port = args.getUnsigned("port", c.port);
  if (!port || port.value() > 65535)
    return fail(badRequest("bad_arguments", "--port must be 0-65535"));
  c.port = static_cast<uint16_t>(port.value());
  if (args.has("bind")) c.bind = args.get("bind");
  if (args.has("data-dir")) c.dataDir = args.get("data-dir");
  if (args.has("advertise")) c.advertiseUrl = args.get("advertise");
  log::setLevelFromEnv();
  auto controller = control::Controller::start(c);
  if (!controller) return fail(controller.error());
  if (args.has("port-file")) writePortFile(args.get("port-file"), controller.value()->port());
  std::printf("LIFL controller is up: %s://%s:%u\n", c.tls.enabled() ? "https" : "http",
              c.bind.c_str(), controller.value()->port());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stopSignals, &sig);
  LIFL_INFO("stopping on signal " << sig);
  controller.value()->stop();
  return 0;
}

}  // namespace lifl::cli
