// The node agent's configuration (YAML, every key documented in docs/config.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lifl/common/access_policy.h"
#include "lifl/common/error.h"
#include "lifl/common/tls_context.h"
#include "lifl/dataplane/chain_manager.h"
#include "lifl/dataplane/cluster_link.h"
#include "lifl/dataplane/router.h"

namespace lifl::dataplane {

struct AgentConfig {
  std::string bind = "127.0.0.1";
  uint16_t port = 8080;
  std::string dataDir = "/tmp/lifl";
  std::string router = "ebpf";
  // dpdk (router: dpdk)
  DpdkPolling dpdkPolling = DpdkPolling::Adaptive;
  uint32_t dpdkSpinMicros = 50;
  // store
  std::string
      storePath;  ///< default: /dev/shm/lifl-<port>-<pid>, or <hugepage dir>/... with hugepages
  uint64_t storeBytes = 2ull << 30;
  bool hugepages = false;
  std::string hugepageDir = "/dev/hugepages";
  // functions
  uint32_t warmPool = 4;
  std::vector<ChainSpec> chains;
  double chainTimeoutSeconds = 30;
  double idleSeconds = 60;         ///< a job with no update for this long gives its instances back
  uint32_t scaleUpQueueDepth = 4;  ///< a leaf this many descriptors behind gets a helper
  bool colocateRoles = true;       ///< middles and the top run in their first leaf's process
  double keepAliveSeconds = 1;     ///< idle instances beyond the warm pool exit after this
  /// functions.user: the account function instances run as ("": the agent's own). An agent
  /// running as root starts them as root without capabilities otherwise; with a user of their
  /// own they cannot signal the agent or read root's files either.
  std::string functionsUser;
  uint32_t maxBufferedUpdates = 12;  ///< per eager job: update bodies not yet in a partial
  std::string device = "cpu";        ///< where leaves fold for jobs that name no device
  uint64_t maxEventBytes = 16ull << 20;
  // gateway
  uint32_t gatewayThreads = 2;
  double headerTimeoutSeconds = 30;
  double bodyTimeoutSeconds = 300;
  uint32_t maxConnections = 1024;
  ServerTlsFiles gatewayTls;  ///< gateway.tls_*: the gateway speaks HTTPS only
  std::string logLevel = "info";
  SecurityConfig security;  ///< credentials and rate limits (docs/security.md)
  ClusterConfig cluster;    ///< `cluster.controller` set: the agent joins that controller

  /// The router's options; the DPDK prefix is named after the node's store segment, so that
  /// it is the node's own and a restarted agent takes its predecessor's.
  RouterOptions routerOptions(const std::string& resolvedStorePath) const;
};

/// Reads a YAML config file (an empty path gives the defaults).
Result<AgentConfig> loadAgentConfig(const std::string& path);
/// Parses YAML text into a config (used by loadAgentConfig and the tests).
Result<AgentConfig> parseAgentConfig(const std::string& yaml);

}  // namespace lifl::dataplane
