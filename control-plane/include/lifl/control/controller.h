// The cluster controller (`lifl controller`): the jobs API of API.md for jobs that run on
// several node agents, the node registry (`/v1/nodes`, heartbeats, draining of nodes that
// miss them), the round authority (admission of every update, round close, deadlines) and
// the durable job state that lets it be killed and restarted mid-job.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "lifl/common/access_policy.h"
#include "lifl/common/error.h"
#include "lifl/common/tls_context.h"

namespace lifl::control {

struct ControllerConfig {
  std::string bind = "127.0.0.1";
  uint16_t port = 8090;
  std::string advertiseUrl;  ///< how agents reach it; default http://<bind>:<port>
  std::string dataDir = "/tmp/lifl-controller";
  uint32_t threads = 2;
  double heartbeatSeconds = 1;        ///< told to agents at registration
  double nodeTimeoutSeconds = 5;      ///< a node silent for this long is drained
  double commandTimeoutSeconds = 30;  ///< bound on one controller -> agent request
  std::string logLevel = "info";
  /// security.auth: the jobs API needs the admin credential, tokens are signed here, and the
  /// agents' calls the cluster credential (docs/security.md).
  SecurityConfig security;
  /// tls.cert_file, tls.key_file: the API speaks HTTPS only; tls.client_ca_file adds mTLS
  /// (agents, admins and the command line present a certificate of that CA).
  ServerTlsFiles tls;
  /// tls.ca_file: the CA that agents' https:// gateways must chain to (empty: the system's).
  /// Calling them, the controller presents its own tls.cert_file, for agents that ask (mTLS).
  std::string tlsCaFile;
};

/// Reads the controller's YAML config (an empty path gives the defaults).
Result<ControllerConfig> loadControllerConfig(const std::string& path);
Result<ControllerConfig> parseControllerConfig(const std::string& yaml);

class Controller {
 public:
  static Result<std::unique_ptr<Controller>> start(ControllerConfig config);
  ~Controller();
  uint16_t port() const;
  void stop();

  struct State;  ///< defined in control-plane/src/controller_state.h

 private:
  explicit Controller(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace lifl::control
