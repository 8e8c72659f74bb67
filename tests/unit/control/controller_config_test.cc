#include <gtest/gtest.h>

#include "lifl/control/controller.h"

namespace lifl::control {
namespace {

TEST(ControllerConfig, DefaultsAndOverrides) {
  auto d = parseControllerConfig("");
  ASSERT_TRUE(d);
  EXPECT_EQ(d.value().port, 8090);
  EXPECT_EQ(d.value().nodeTimeoutSeconds, 5);
  auto c = parseControllerConfig(
      "bind: 10.0.0.1\nport: 0\nheartbeat_seconds: 0.5\nnode_timeout_seconds: 2\n"
      "data_dir: /var/lib/lifl\nadvertise_url: http://ctl:8090\n");
  ASSERT_TRUE(c) << c.error().toString();
  EXPECT_EQ(c.value().bind, "10.0.0.1");
  EXPECT_EQ(c.value().port, 0);
  EXPECT_EQ(c.value().heartbeatSeconds, 0.5);
  EXPECT_EQ(c.value().nodeTimeoutSeconds, 2);
  EXPECT_EQ(c.value().dataDir, "/var/lib/lifl");
  EXPECT_EQ(c.value().advertiseUrl, "http://ctl:8090");
}

TEST(ControllerConfig, TlsKeys) {
  auto c = parseControllerConfig(
      "tls:\n  cert_file: /etc/lifl/ctl.crt\n  key_file: /etc/lifl/ctl.key\n"
      "  client_ca_file: /etc/lifl/ca.crt\n  ca_file: /etc/lifl/nodes-ca.crt\n");
  ASSERT_TRUE(c) << c.error().toString();
  EXPECT_TRUE(c.value().tls.enabled());
  EXPECT_EQ(c.value().tls.certFile, "/etc/lifl/ctl.crt");
  EXPECT_EQ(c.value().tls.keyFile, "/etc/lifl/ctl.key");
  EXPECT_EQ(c.value().tls.clientCaFile, "/etc/lifl/ca.crt");
  EXPECT_EQ(c.value().tlsCaFile, "/etc/lifl/nodes-ca.crt");
  EXPECT_FALSE(parseControllerConfig("").value().tls.enabled()) << "plain HTTP by default";
}

TEST(ControllerConfig, RejectsBadConfigs) {
  for (const char* bad :
       {"prot: 1", "port: 70000", "threads: 0", "heartbeat_seconds: 0",
        "heartbeat_seconds: 3\nnode_timeout_seconds: 2", "[1]", "tls: 1", "tls: {cert: x}",
        "tls: {cert_file: x}", "tls: {key_file: x}", "tls: {client_ca_file: x}"}) {
    auto c = parseControllerConfig(bad);
    ASSERT_FALSE(c) << bad;
    EXPECT_EQ(c.error().code, "invalid_config") << bad;
  }
  // The error names the key an operator must fix.
  EXPECT_NE(parseControllerConfig("tls: {client_ca_file: x}").error().detail.find("tls.cert_file"),
            std::string::npos);
}

}  // namespace
}  // namespace lifl::control
