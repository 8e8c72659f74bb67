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

TEST(ControllerConfig, RejectsBadConfigs) {
  for (const char* bad : {"prot: 1", "port: 70000", "threads: 0", "heartbeat_seconds: 0",
                          "heartbeat_seconds: 3\nnode_timeout_seconds: 2", "[1]"}) {
    auto c = parseControllerConfig(bad);
    ASSERT_FALSE(c) << bad;
    EXPECT_EQ(c.error().code, "invalid_config") << bad;
  }
}

}  // namespace
}  // namespace lifl::control
