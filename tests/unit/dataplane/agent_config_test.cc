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
  for (const char* bad : {"router: sockets",
                          "router: dpdk\nfunctions: {user: lifl-fn}",
                          "dpdk: {polling: sometimes}",
                          "dpdk: {spin: 10}",
                          "dpdk: {spin_us: 2000000}",
                          "prot: 80",
                          "store: {bytes: 10}",
                          "port: 70000",
                          "functions: {chains: [{name: x}]}",
                          "functions: {chains: [{functions: [a]}]}",
                          "gateway: {threads: 0}",
                          "[1, 2]",
                          "port: {a: 1}",
                          "functions: {warm_pol: 2}",
                          "store: {byte: 1}",
                          "cluster: {controler: http://x:1}",
                          "cluster: {controller: x:1}",
                          "functions: {keep_alive_seconds: -1}",
                          "gateway: 3",
                          "cluster: {controller: ftp://x:1}",
                          "cluster: {cert_file: a.crt}",
                          "cluster: {key_file: a.key}",
                          "cluster: {ca: x}",
                          "gateway: {tls_key_file: k}",
                          "gateway: {tls_client_ca_file: ca}"}) {
    auto c = parseAgentConfig(bad);
    ASSERT_FALSE(c) << bad;
    EXPECT_EQ(c.error().code, "invalid_config") << bad;
  }
}

TEST(AgentConfig, DpdkRouterAndItsPolling) {
  auto c = parseAgentConfig("router: dpdk\ndpdk: {polling: busy, spin_us: 20}");
  ASSERT_TRUE(c) << c.error().toString();
  EXPECT_EQ(c.value().router, "dpdk");
  EXPECT_EQ(c.value().dpdkPolling, DpdkPolling::Busy);
  EXPECT_EQ(c.value().dpdkSpinMicros, 20u);
  // The prefix is the node's: its store segment's name, whatever the directory.
  const auto o = c.value().routerOptions("/dev/shm/lifl-00000000deadbeef");
  EXPECT_EQ(o.dpdkPrefix, "lifl-00000000deadbeef");
  EXPECT_EQ(o.dpdkPolling, DpdkPolling::Busy);
  EXPECT_EQ(o.spinMicros, 20u);
  auto defaults = parseAgentConfig("router: dpdk");
  ASSERT_TRUE(defaults);
  EXPECT_EQ(defaults.value().dpdkPolling, DpdkPolling::Adaptive);
  EXPECT_EQ(defaults.value().dpdkSpinMicros, 50u);
}

TEST(AgentConfig, ClusterAndScalingKeys) {
  auto c = parseAgentConfig(R"(
cluster:
  controller: http://10.0.0.1:8090
  node_name: node-a
  advertise_url: http://10.0.0.11:8080
  slots: 12
  ca_file: /etc/lifl/ca.crt
  cert_file: /etc/lifl/node-a.crt
  key_file: /etc/lifl/node-a.key
functions: {scale_up_queue_depth: 0, colocate_roles: false, keep_alive_seconds: 5}
)");
  ASSERT_TRUE(c) << c.error().toString();
  EXPECT_EQ(c.value().cluster.controller, "http://10.0.0.1:8090");
  EXPECT_EQ(c.value().cluster.nodeName, "node-a");
  EXPECT_EQ(c.value().cluster.advertiseUrl, "http://10.0.0.11:8080");
  EXPECT_EQ(c.value().cluster.slots, 12u);
  EXPECT_EQ(c.value().cluster.tls.caFile, "/etc/lifl/ca.crt");
  EXPECT_EQ(c.value().cluster.tls.certFile, "/etc/lifl/node-a.crt");
  EXPECT_EQ(c.value().cluster.tls.keyFile, "/etc/lifl/node-a.key");
  EXPECT_TRUE(parseAgentConfig("cluster: {controller: https://ctl:8090}"));
  EXPECT_EQ(c.value().scaleUpQueueDepth, 0u);
  EXPECT_FALSE(c.value().colocateRoles);
  EXPECT_EQ(c.value().keepAliveSeconds, 5);
  auto defaults = parseAgentConfig("");
  EXPECT_TRUE(defaults.value().cluster.controller.empty()) << "standalone unless configured";
  EXPECT_EQ(defaults.value().scaleUpQueueDepth, 4u);
  EXPECT_TRUE(defaults.value().colocateRoles);
}

}  // namespace
}  // namespace lifl::dataplane
