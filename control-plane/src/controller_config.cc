#include <yaml-cpp/yaml.h>

#include <fstream>
#include <sstream>

#include "lifl/control/controller.h"

namespace lifl::control {

Result<ControllerConfig> parseControllerConfig(const std::string& yaml) {
  ControllerConfig c;
  auto bad = [](const std::string& d) { return badRequest("invalid_config", d); };
  try {
    YAML::Node root = YAML::Load(yaml);
    if (!root || root.IsNull()) return c;
    if (!root.IsMap()) return bad("config must be a YAML mapping");
    static const std::set<std::string> kKeys = {"bind",
                                                "port",
                                                "advertise_url",
                                                "data_dir",
                                                "threads",
                                                "log_level",
                                                "heartbeat_seconds",
                                                "node_timeout_seconds",
                                                "command_timeout_seconds",
                                                "security",
                                                "tls"};
    for (const auto& kv : root)
      if (!kKeys.count(kv.first.as<std::string>()))
        return bad("unknown config key " + kv.first.as<std::string>());
    auto read = [&](const char* key, auto& out) {
      if (root[key]) out = root[key].as<std::decay_t<decltype(out)>>();
    };
    int port = c.port;
    read("bind", c.bind);
    read("port", port);
    read("advertise_url", c.advertiseUrl);
    read("data_dir", c.dataDir);
    read("threads", c.threads);
    read("log_level", c.logLevel);
    read("heartbeat_seconds", c.heartbeatSeconds);
    read("node_timeout_seconds", c.nodeTimeoutSeconds);
    read("command_timeout_seconds", c.commandTimeoutSeconds);
    if (auto sec = root["security"]) {
      if (!sec.IsMap()) return bad("security must be a mapping");
      static const std::set<std::string> kSecurityKeys = {"auth", "signing_key_file",
                                                          "admin_token_file", "cluster_token_file",
                                                          "token_ttl_seconds"};
      for (const auto& kv : sec)
        if (!kSecurityKeys.count(kv.first.as<std::string>()))
          return bad("unknown config key security." + kv.first.as<std::string>());
      auto readSec = [&](const char* key, auto& out) {
        if (sec[key]) out = sec[key].as<std::decay_t<decltype(out)>>();
      };
      readSec("auth", c.security.auth);
      readSec("signing_key_file", c.security.signingKeyFile);
      readSec("admin_token_file", c.security.adminTokenFile);
      readSec("cluster_token_file", c.security.clusterTokenFile);
      readSec("token_ttl_seconds", c.security.tokenTtlSeconds);
      if (!(c.security.tokenTtlSeconds > 0))
        return bad("security.token_ttl_seconds must be positive");
    }
    if (auto tls = root["tls"]) {
      if (!tls.IsMap()) return bad("tls must be a mapping");
      static const std::set<std::string> kTlsKeys = {"cert_file", "key_file", "client_ca_file",
                                                     "ca_file"};
      for (const auto& kv : tls)
        if (!kTlsKeys.count(kv.first.as<std::string>()))
          return bad("unknown config key tls." + kv.first.as<std::string>());
      auto readTls = [&](const char* key, std::string& out) {
        if (tls[key]) out = tls[key].as<std::string>();
      };
      readTls("cert_file", c.tls.certFile);
      readTls("key_file", c.tls.keyFile);
      readTls("client_ca_file", c.tls.clientCaFile);
      readTls("ca_file", c.tlsCaFile);
    }
    if (port < 0 || port > 65535) return bad("port must be 0-65535");
    c.port = static_cast<uint16_t>(port);
  } catch (const YAML::Exception& e) {
    return bad(std::string("config: ") + e.what());
  }
  if (c.threads == 0 || c.threads > 64) return bad("threads must be 1-64");
  LIFL_TRYV(checkServerTlsFiles(c.tls, "tls."));
  if (c.heartbeatSeconds <= 0 || c.nodeTimeoutSeconds <= c.heartbeatSeconds)
    return bad("node_timeout_seconds must be larger than heartbeat_seconds (> 0)");
  return c;
}

Result<ControllerConfig> loadControllerConfig(const std::string& path) {
  if (path.empty()) return ControllerConfig{};
  std::ifstream in(path);
  if (!in) return badRequest("invalid_config", "cannot read config file " + path);
  std::stringstream text;
  text << in.rdbuf();
  return parseControllerConfig(text.str());
}

}  // namespace lifl::control
