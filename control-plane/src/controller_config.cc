#include <fstream>
#include <sstream>

#include "lifl/common/yaml_config.h"
#include "lifl/control/controller.h"

namespace lifl::control {

Result<ControllerConfig> parseControllerConfig(const std::string& yaml) {
  using config::checkKeys;
  using config::read;
  ControllerConfig c;
  const auto bad = config::invalid;
  try {
    YAML::Node root = YAML::Load(yaml);
    if (!root || root.IsNull()) return c;
    LIFL_TRYV(checkKeys(
        root, "",
        {"bind", "port", "advertise_url", "data_dir", "threads", "log_level", "heartbeat_seconds",
         "node_timeout_seconds", "command_timeout_seconds", "security", "tls"}));
    int port = c.port;
    read(root, "bind", c.bind);
    read(root, "port", port);
    read(root, "advertise_url", c.advertiseUrl);
    read(root, "data_dir", c.dataDir);
    read(root, "threads", c.threads);
    read(root, "log_level", c.logLevel);
    read(root, "heartbeat_seconds", c.heartbeatSeconds);
    read(root, "node_timeout_seconds", c.nodeTimeoutSeconds);
    read(root, "command_timeout_seconds", c.commandTimeoutSeconds);
    if (auto sec = root["security"]) LIFL_TRYV(config::readSecurity(sec, c.security, false));
    if (auto tls = root["tls"]) {
      LIFL_TRYV(checkKeys(tls, "tls", {"cert_file", "key_file", "client_ca_file", "ca_file"}));
      read(tls, "cert_file", c.tls.certFile);
      read(tls, "key_file", c.tls.keyFile);
      read(tls, "client_ca_file", c.tls.clientCaFile);
      read(tls, "ca_file", c.tlsCaFile);
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
