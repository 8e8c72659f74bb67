#pragma once

#include <signal.h>

#include <memory>

#include "lifl/cli/args.h"
#include "lifl/dataplane/agent.h"

namespace lifl::cli {

/// Starts the platform in this process from `lifl up`'s flags (--config, --port, --router, ...).
/// @param defaultPort used when neither --port nor the config file sets one (0: any free port)
Result<std::unique_ptr<dataplane::Agent>> startAgent(const Args& args, uint16_t defaultPort = 8080);
/// Blocks SIGINT/SIGTERM in every thread started from now on; the caller sigwait()s them.
sigset_t blockStopSignals();
/// Writes a bound port for scripts and tests (atomically: renamed into place).
void writePortFile(const std::string& path, uint16_t port);

}  // namespace lifl::cli
