#include <signal.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <filesystem>

#include "lifl/cli/args.h"
#include "lifl/cli/commands.h"
#include "lifl/cli/embedded.h"
#include "lifl/common/log.h"
#include "lifl/control/planner.h"
#include "lifl/dataplane/agent.h"
#include "lifl/functions/sdk.h"
#include "model.h"
#include "retrieval.h"

namespace lifl::cli {

namespace {
constexpr const char* kUpHelp =
    "usage: lifl up [--port 8080] [--bind 127.0.0.1] [--data-dir DIR] [--config FILE]\n"
    "               [--router ebpf|userspace|dpdk] [--store-bytes N] [--warm-pool N]\n"
    "               [--port-file FILE] [--auth] [--model DIR [--model-name NAME]\n"
    "               [--quantize int8|int4] [--model-device cpu|cuda]\n"
    "               [--model-gemm cublas|exact] [--model-kv-cache bf16|f32]\n"
    "               [--model-kv-handoff ipc|host]\n"
    "               [--model-max-sequences 16] [--model-prefill-instances 4]\n"
    "               [--model-decode-instances 1] [--model-max-context 8192]\n"
    "               [--kv-retrieval budget=N,tau=T]]\n"
    "\n"
    "Runs the whole platform on this machine (agent, gateway, jobs API, function instances)\n"
    "until SIGINT/SIGTERM. Flags override the YAML config (docs/config.md). GET /readyz\n"
    "answers 200 once it accepts work. --port 0 picks a free port; --port-file writes it.\n"
    "--model serves a Llama model folder (config.json + *.safetensors) at POST\n"
    "/v1/completions through the chain llm.prefill -> llm.decode (docs/llm.md); prefill\n"
    "scales from 1 to --model-prefill-instances instances by queue depth, decode to\n"
    "--model-decode-instances by requests in flight. --auth turns on security.auth: the\n"
    "jobs API needs the admin credential (<data-dir>/auth/admin.token, created at the first\n"
    "start) and pushing an update a client token (lifl token create; docs/security.md).";

constexpr const char* kAgentHelp =
    "usage: lifl agent --controller URL [--name NODE] [--advertise URL] [--slots N]\n"
    "                  [lifl up's options: --port --bind --data-dir --config --router ...]\n"
    "\n"
    "Runs this node's agent (gateway, object store, router, function instances) as a member\n"
    "of the cluster of `lifl controller` at URL: it registers, sends heartbeats, and runs the\n"
    "rounds' subtrees the controller assigns it. Flags override the config's `cluster:` keys\n"
    "(docs/config.md). --advertise is how the controller and other nodes reach this gateway\n"
    "(default http://<bind>:<port>). With --model DIR the node serves that model, and every\n"
    "gateway of the cluster answers POST /v1/completions for it (docs/llm.md).\n"
    "--model-role prefill|decode (default both) runs only that stage here: a decode node\n"
    "has its prompts prefilled by a prefill node, whose KV cache comes over the network.";

std::string selfExecutable() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "lifl";
  buf[n] = '\0';
  return buf;
}

Result<dataplane::AgentConfig> configFromArgs(const Args& args, uint16_t defaultPort) {
  LIFL_TRY(config, dataplane::loadAgentConfig(args.get("config")));
  if (!args.has("config")) config.port = defaultPort;
  if (args.has("port")) {
    LIFL_TRY(port, args.getUnsigned("port", 8080));
    if (port > 65535) return badRequest("bad_arguments", "--port must be 0-65535");
    config.port = static_cast<uint16_t>(port);
  }
  if (args.has("bind")) config.bind = args.get("bind");
  if (args.has("data-dir")) config.dataDir = args.get("data-dir");
  if (args.has("router")) config.router = args.get("router");
  if (args.has("auth")) config.security.auth = true;
  if (args.has("controller")) config.cluster.controller = args.get("controller");
  if (args.has("name")) config.cluster.nodeName = args.get("name");
  if (args.has("advertise")) config.cluster.advertiseUrl = args.get("advertise");
  LIFL_TRY(slots, args.getUnsigned("slots", config.cluster.slots));
  config.cluster.slots = static_cast<uint32_t>(slots);
  LIFL_TRY(bytes, args.getUnsigned("store-bytes", config.storeBytes));
  config.storeBytes = bytes;
  LIFL_TRY(warm, args.getUnsigned("warm-pool", config.warmPool));
  config.warmPool = static_cast<uint32_t>(warm);
  auto& registry = fn::FunctionRegistry::global();
  fn::registerExampleFunctions(registry);
  fn::registerFlFunctions(registry);
  fn::registerLlmFunctions(registry);
  if (args.has("model")) {
    // Checked here, so that a bad folder stops `lifl up` instead of every request.
    auto model = llm::LlamaModel::load(args.get("model"));
    if (!model) return model.error();
    const std::string quantize = args.get("quantize");
    if (!quantize.empty()) {
      if (quantize != "int8" && quantize != "int4")
        return badRequest("bad_arguments", "--quantize is int8 or int4");
      LIFL_TRYV(model.value().quantize(quantize == "int8" ? 8 : 4));
    }
    const std::string name =
        args.get("model-name", std::filesystem::path(args.get("model")).filename().string());
    LIFL_TRY(sequences, args.getPositive("model-max-sequences", 16));
    if (args.has("kv-retrieval")) LIFL_TRYV(llm::RetrievalConfig::parse(args.get("kv-retrieval")));
    LIFL_TRY(gemm, args.getChoice("model-gemm", "cublas", "exact"));
    LIFL_TRY(kvCache, args.getChoice("model-kv-cache", "bf16", "f32"));
    LIFL_TRY(prefills, args.getPositive("model-prefill-instances", 4));
    LIFL_TRY(context, args.getPositive("model-max-context", 8192));
    LIFL_TRY(decodes, args.getPositive("model-decode-instances", 1));
    LIFL_TRY(handoff, args.getChoice("model-kv-handoff", "ipc", "host"));
    LIFL_TRY(role, args.getChoice("model-role", {"both", "prefill", "decode"}));
    if (role != "both" && config.cluster.controller.empty())
      return badRequest("bad_arguments",
                        "--model-role " + role + " needs a cluster (lifl agent --controller)");
    std::vector<std::string> stages;
    std::vector<uint32_t> maxInstances;  // of each stage
    if (role != "decode") {
      stages.push_back("llm.prefill");
      maxInstances.push_back(static_cast<uint32_t>(prefills));
    }
    if (role != "prefill") {
      stages.push_back("llm.decode");
      maxInstances.push_back(static_cast<uint32_t>(decodes));
    }
    config.chains.push_back({"llm",
                             stages,
                             {{"model", std::filesystem::absolute(args.get("model")).string()},
                              {"model_name", name},
                              {"quantize", quantize},
                              {"device", args.get("model-device", "cpu")},
                              {"gemm", gemm},
                              {"kv_cache", kvCache},
                              // A prefill node's KV cache leaves the node: in the hand-off.
                              {"kv_handoff", role == "prefill" ? "host" : handoff},
                              {"role", role},
                              {"max_sequences", sequences},
                              {"max_context", context},
                              {"kv_retrieval", args.get("kv-retrieval")}},
                             maxInstances,
                             // A decode node's decode stage is the chain's entry.
                             role == "decode"});
  }
  for (const auto& chain : config.chains)
    for (const auto& f : chain.functions)
      if (!registry.contains(f))
        return badRequest("invalid_config", "chain " + chain.name + " names unknown function " + f);
  return config;
}

}  // namespace

sigset_t blockStopSignals() {
  sigset_t stopSignals;
  sigemptyset(&stopSignals);
  sigaddset(&stopSignals, SIGINT);
  sigaddset(&stopSignals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stopSignals, nullptr);
  return stopSignals;
}

void writePortFile(const std::string& path, uint16_t port) {
  const std::string tmp = path + ".tmp";
  if (FILE* f = std::fopen(tmp.c_str(), "w")) {
    std::fprintf(f, "%u\n", port);
    std::fclose(f);
    std::rename(tmp.c_str(), path.c_str());  // readers never see a half-written file
  }
}

Result<std::unique_ptr<dataplane::Agent>> startAgent(const Args& args, uint16_t defaultPort) {
  LIFL_TRY(config, configFromArgs(args, defaultPort));
  log::setLevelFromEnv();
  std::error_code ec;
  std::filesystem::create_directories(config.dataDir, ec);
  return dataplane::Agent::start(config, control::planTree, selfExecutable());
}

namespace {

/// Runs an agent until SIGINT/SIGTERM: `lifl up` (standalone) or `lifl agent` (cluster).
int runAgent(int argc, char** argv, bool member) {
  auto args = Args::parse(argc, argv, 2, {"auth"});
  if (!args) return fail(args.error());
  if (args.value().wantsHelp()) {
    std::puts(member ? kAgentHelp : kUpHelp);
    return 0;
  }
  const sigset_t stopSignals = blockStopSignals();  // waited for below

  if (member && !args.value().has("controller") && !args.value().has("config"))
    return fail(badRequest("bad_arguments", "lifl agent needs --controller URL"));
  if (!member && args.value().has("controller"))
    return fail(badRequest("bad_arguments", "use `lifl agent` to join a controller"));
  auto agent = startAgent(args.value());
  if (!agent) return fail(agent.error());
  const auto& config = agent.value()->config();
  if (member && config.cluster.controller.empty())
    return fail(badRequest("bad_arguments", "lifl agent needs cluster.controller or --controller"));
  const uint16_t port = agent.value()->port();
  if (args.value().has("port-file")) writePortFile(args.value().get("port-file"), port);
  std::printf("%s is up: %s://%s:%u (router %s)\n", member ? "LIFL agent" : "LIFL",
              config.gatewayTls.enabled() ? "https" : "http", config.bind.c_str(), port,
              config.router.c_str());
  if (config.security.auth)
    std::printf("auth is on: the admin credential is in %s\n",
                config.security.adminTokenPath(config.dataDir).c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stopSignals, &sig);
  LIFL_INFO("stopping on signal " << sig);
  agent.value()->stop();
  return 0;
}

}  // namespace

int cmdUp(int argc, char** argv) { return runAgent(argc, argv, false); }
int cmdAgent(int argc, char** argv) { return runAgent(argc, argv, true); }

}  // namespace lifl::cli
