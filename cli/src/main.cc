// lifl: the one binary of the platform. `lifl up` runs it on this machine; `lifl controller`
// and `lifl agent` run it on several; the other subcommands are clients of a running
// gateway, except `instance`, which the agent runs to start a function instance.
#include <cstdio>
#include <cstring>
#include <string>

#include "lifl/cli/commands.h"
#include "lifl/common/error.h"

namespace lifl::cli {

int fail(const Error& e) {
  std::fprintf(stderr, "lifl: %s: %s\n", e.code.c_str(), e.detail.c_str());
  return e.status >= 500 ? 2 : 1;
}

}  // namespace lifl::cli

namespace {

void usage() {
  std::puts(
      "usage: lifl <command> [options]\n"
      "\n"
      "commands:\n"
      "  up          run the platform on this machine (agent + gateway + jobs API)\n"
      "  push        push one update (a safetensors file) to a job\n"
      "  pull        download a job's current global model\n"
      "  job         create, list, show or cancel jobs\n"
      "  status      show whether the platform is ready and its jobs\n"
      "  token       create a client token (where security.auth is on)\n"
      "  bench       simulated clients and other load generators\n"
      "  model       write a random Llama model, or run one (CPU)\n"
      "  controller  run the cluster controller (jobs API, node registry, rounds)\n"
      "  agent       run a node agent that joins a controller\n"
      "\n"
      "Run `lifl <command> --help` for the options of a command.");
}

}  // namespace

int main(int argc, char** argv) {
  using namespace lifl::cli;
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    usage();
    return argc < 2 ? 1 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "up") return cmdUp(argc, argv);
  if (cmd == "instance") return cmdInstance(argc, argv);
  if (cmd == "push") return cmdPush(argc, argv);
  if (cmd == "pull") return cmdPull(argc, argv);
  if (cmd == "job") return cmdJob(argc, argv);
  if (cmd == "status") return cmdStatus(argc, argv);
  if (cmd == "bench") return cmdBench(argc, argv);
  if (cmd == "model") return cmdModel(argc, argv);
  if (cmd == "token") return cmdToken(argc, argv);
  if (cmd == "agent") return cmdAgent(argc, argv);
  if (cmd == "controller") return cmdController(argc, argv);
  std::fprintf(stderr, "lifl: unknown command %s\n\n", cmd.c_str());
  usage();
  return 1;
}
