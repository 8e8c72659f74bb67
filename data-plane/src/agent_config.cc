#include "lifl/dataplane/agent_config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "lifl/common/yaml_config.h"

namespace lifl::dataplane {
namespace {
using config::checkKeys;
using config::read;
const auto configError = config::invalid;
}  // namespace

Result<AgentConfig> parseAgentConfig(const std::string& yaml) {
  AgentConfig c;
  try {
    YAML::Node root = YAML::Load(yaml);
    if (!root || root.IsNull()) return c;
    LIFL_TRYV(checkKeys(root, "",
                        {"bind", "port", "data_dir", "router", "dpdk", "store", "functions",
                         "gateway", "log_level", "cluster", "security"}));
    read(root, "bind", c.bind);
    int port = c.port;
    read(root, "port", port);
    if (port < 0 || port > 65535) return configError("port must be 0-65535");
    c.port = static_cast<uint16_t>(port);
    read(root, "data_dir", c.dataDir);
    read(root, "router", c.router);
    read(root, "log_level", c.logLevel);
    if (auto d = root["dpdk"]) {
      LIFL_TRYV(checkKeys(d, "dpdk", {"polling", "spin_us"}));
      std::string polling = "adaptive";
      read(d, "polling", polling);
      if (polling != "adaptive" && polling != "busy")
        return configError("dpdk.polling must be adaptive or busy");
      c.dpdkPolling = polling == "busy" ? DpdkPolling::Busy : DpdkPolling::Adaptive;
      read(d, "spin_us", c.dpdkSpinMicros);
      if (c.dpdkSpinMicros > 1000000) return configError("dpdk.spin_us must be at most 1000000");
    }
    if (auto s = root["store"]) {
      LIFL_TRYV(checkKeys(s, "store", {"path", "bytes", "hugepages", "hugepage_dir"}));
      read(s, "path", c.storePath);
      read(s, "bytes", c.storeBytes);
      read(s, "hugepages", c.hugepages);
      read(s, "hugepage_dir", c.hugepageDir);
    }
    if (auto f = root["functions"]) {
      LIFL_TRYV(checkKeys(f, "functions",
                          {"warm_pool", "chain_timeout_seconds", "idle_seconds", "max_event_bytes",
                           "scale_up_queue_depth", "colocate_roles", "keep_alive_seconds",
                           "max_buffered_updates", "device", "chains", "user"}));
      read(f, "warm_pool", c.warmPool);
      read(f, "chain_timeout_seconds", c.chainTimeoutSeconds);
      read(f, "idle_seconds", c.idleSeconds);
      read(f, "scale_up_queue_depth", c.scaleUpQueueDepth);
      read(f, "colocate_roles", c.colocateRoles);
      read(f, "keep_alive_seconds", c.keepAliveSeconds);
      read(f, "max_buffered_updates", c.maxBufferedUpdates);
      read(f, "user", c.functionsUser);
      read(f, "device", c.device);
      if (c.device != "cpu" && c.device != "cuda")
        return configError("functions.device must be cpu or cuda");
      read(f, "max_event_bytes", c.maxEventBytes);
      if (auto chains = f["chains"]) {
        if (!chains.IsSequence()) return configError("functions.chains must be a list");
        for (const auto& ch : chains) {
          ChainSpec spec;
          spec.name = ch["name"].as<std::string>("");
          if (spec.name.empty()) return configError("every chain needs a name");
          if (!ch["functions"] || !ch["functions"].IsSequence() || ch["functions"].size() == 0)
            return configError("chain " + spec.name + " needs a non-empty functions list");
          for (const auto& fn : ch["functions"]) spec.functions.push_back(fn.as<std::string>());
          // A number (the first hop's), or a list with one per hop.
          if (const auto m = ch["max_instances"]; m && m.IsSequence())
            for (const auto& v : m) spec.maxInstances.push_back(v.as<uint32_t>());
          else if (m)
            spec.maxInstances.push_back(m.as<uint32_t>());
          for (uint32_t v : spec.maxInstances)
            if (v == 0)
              return configError("chain " + spec.name + ": max_instances must be at least 1");
          c.chains.push_back(std::move(spec));
        }
      }
    }
    if (auto g = root["gateway"]) {
      LIFL_TRYV(
          checkKeys(g, "gateway",
                    {"threads", "header_timeout_seconds", "body_timeout_seconds", "max_connections",
                     "tls_cert_file", "tls_key_file", "tls_client_ca_file"}));
      read(g, "tls_cert_file", c.gatewayTls.certFile);
      read(g, "tls_key_file", c.gatewayTls.keyFile);
      read(g, "tls_client_ca_file", c.gatewayTls.clientCaFile);
      read(g, "threads", c.gatewayThreads);
      read(g, "header_timeout_seconds", c.headerTimeoutSeconds);
      read(g, "body_timeout_seconds", c.bodyTimeoutSeconds);
      read(g, "max_connections", c.maxConnections);
    }
    if (auto sec = root["security"]) LIFL_TRYV(config::readSecurity(sec, c.security, true));
    if (auto cl = root["cluster"]) {
      LIFL_TRYV(checkKeys(cl, "cluster",
                          {"controller", "node_name", "advertise_url", "slots",
                           "request_timeout_seconds", "ca_file", "cert_file", "key_file"}));
      read(cl, "controller", c.cluster.controller);
      read(cl, "node_name", c.cluster.nodeName);
      read(cl, "advertise_url", c.cluster.advertiseUrl);
      read(cl, "slots", c.cluster.slots);
      read(cl, "request_timeout_seconds", c.cluster.requestTimeoutSeconds);
      read(cl, "ca_file", c.cluster.tls.caFile);
      read(cl, "cert_file", c.cluster.tls.certFile);
      read(cl, "key_file", c.cluster.tls.keyFile);
    }
  } catch (const YAML::Exception& e) {
    return configError(std::string("config: ") + e.what());
  }
  if (c.router != "ebpf" && c.router != "userspace" && c.router != "dpdk")
    return configError("router must be ebpf, userspace or dpdk");
  if (c.router == "dpdk" && !c.functionsUser.empty())
    return configError(
        "router: dpdk runs the instances as the agent's user (they share its DPDK memory); "
        "functions.user cannot be set with it");
  LIFL_TRYV(checkServerTlsFiles(c.gatewayTls, "gateway.tls_"));
  if (c.cluster.tls.certFile.empty() != c.cluster.tls.keyFile.empty())
    return configError("cluster.cert_file and cluster.key_file go together");
  if (c.gatewayThreads == 0 || c.gatewayThreads > 64)
    return configError("gateway.threads must be 1-64");
  if (c.storeBytes < (16ull << 20)) return configError("store.bytes must be at least 16 MiB");
  if (!c.cluster.controller.empty() && c.cluster.controller.rfind("http://", 0) != 0 &&
      c.cluster.controller.rfind("https://", 0) != 0)
    return configError("cluster.controller must be an http:// or https:// URL");
  if (c.keepAliveSeconds < 0) return configError("functions.keep_alive_seconds must be >= 0");
  if (c.cluster.requestTimeoutSeconds <= 0)
    return configError("cluster.request_timeout_seconds must be positive");
  return c;
}

RouterOptions AgentConfig::routerOptions(const std::string& resolvedStorePath) const {
  RouterOptions o;
  o.dpdkPrefix = std::filesystem::path(resolvedStorePath).filename().string();
  o.dpdkPolling = dpdkPolling;
  o.spinMicros = dpdkSpinMicros;
  return o;
}

Result<AgentConfig> loadAgentConfig(const std::string& path) {
  if (path.empty()) return AgentConfig{};
  std::ifstream in(path);
  if (!in) return configError("cannot read config file " + path);
  std::stringstream text;
  text << in.rdbuf();
  return parseAgentConfig(text.str());
}

}  // namespace lifl::dataplane
