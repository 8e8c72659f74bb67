#include "lifl/dataplane/agent_config.h"

#include <gtest/gtest.h>

namespace lifl::dataplane {
namespace {

TEST(AgentConfig, DefaultsAndOverrides) {
  auto empty = parseAgentConfig("");
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty.value().port, 8080);
  EXPECT_EQ(empty.value().router, "ebpf");
  auto c = parseAgentConfig(R"(
port: 0
router: userspace
store: {bytes: 67108864}
functions:
  warm_pool: 2
  chains:
    - name: shout
      functions: [example.upper, example.reverse, example.rot13]
gateway: {threads: 3}
)");
  ASSERT_TRUE(c) << c.error().toString();
  EXPECT_EQ(c.value().port, 0);
  EXPECT_EQ(c.value().storeBytes, 64ull << 20);
  EXPECT_EQ(c.value().warmPool, 2u);
  ASSERT_EQ(c.value().chains.size(), 1u);
  EXPECT_EQ(c.value().chains[0].functions.size(), 3u);
  EXPECT_EQ(c.value().gatewayThreads, 3u);
}

TEST(AgentConfig, RejectsBadConfigs) {
  for (const char* bad :
       {"router: dpdk", "prot: 80", "store: {bytes: 10}", "port: 70000",
        "functions: {chains: [{name: x}]}", "functions: {chains: [{functions: [a]}]}",
        "gateway: {threads: 0}", "[1, 2]", "port: {a: 1}"}) {
    auto c = parseAgentConfig(bad);
    ASSERT_FALSE(c) << bad;
    EXPECT_EQ(c.error().code, "invalid_config") << bad;
  }
}

}  // namespace
}  // namespace lifl::dataplane
