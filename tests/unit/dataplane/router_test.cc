// The routers behind the one interface: descriptors reach the instance named in their
// first 4 bytes, coalesced sends are split exactly (the socket routers), counters count,
// detach cleans up, groups isolate. The DPDK router runs where it is built, as root, with
// hugepages reserved (scripts/setup.sh --hugepages; CI has them); elsewhere it is skipped
// with a message saying why.
#include "lifl/dataplane/router.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "lifl/dataplane/endpoint.h"

namespace lifl::dataplane {
namespace {

/// Free 2 MiB hugepages of the machine (/proc/meminfo's HugePages_Free).
int freeHugepages() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int value = 0;
  while (in >> key) {
    if (key == "HugePages_Free:" && in >> value) return value;
    in.ignore(1 << 10, '\n');
  }
  return 0;
}

class RouterTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() != "userspace" && ::geteuid() != 0)
      GTEST_SKIP() << "the " << GetParam() << " router needs root (CI runs as root)";
    RouterOptions options;
    if (GetParam() == "dpdk") {
      if (freeHugepages() < 8)
        GTEST_SKIP() << "no hugepages reserved here (scripts/setup.sh --hugepages)";
      options.dpdkPrefix = "lifl-unit-" + std::to_string(::getpid());
    }
    auto r = makeRouter(GetParam(), options);
    if (!r && r.error().code == "no_dpdk") GTEST_SKIP() << r.error().detail;
    ASSERT_TRUE(r) << r.error().toString();
    router_ = std::move(r).value();
  }
  /// An attached instance, put in `group` (the tests' instances share one by default).
  std::unique_ptr<Endpoint> attach(InstanceId id, uint32_t group = 7) {
    auto e = router_->attachHere(id);
    EXPECT_TRUE(e) << e.error().toString();
    if (group != kGroupNone) router_->setGroup(id, group);
    return std::move(e).value();
  }
  /// Whether `from` gets a descriptor through to `to` (waiting up to `ms`).
  static bool delivered(Endpoint& from, Endpoint& to, InstanceId dst, uint64_t mark, int ms) {
    Descriptor d{};
    d.dst = dst;
    d.correlation = mark;
    if (!from.send(d)) return false;
    auto got = to.receive(ms);
    return got && got.value() && got.value()->correlation == mark;
  }
  // Counters of the userspace router are updated by its relay thread: poll (bounded).
  RouteCounters waitCounters(InstanceId id, uint64_t delivered, uint64_t sent) {
    RouteCounters c;
    for (int i = 0; i < 200; ++i) {
      c = router_->counters(id);
      if (c.deliveredMsgs >= delivered && c.sentMsgs >= sent) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return c;
  }
  std::unique_ptr<Router> router_;
};

TEST_P(RouterTest, CoalescedDescriptorsReachTheirDestinations) {
  auto a = attach(10), b = attach(11), c = attach(12);
  constexpr int kCount = 100;
  std::vector<Descriptor> batch(kCount);
  for (int i = 0; i < kCount; ++i) {
    batch[i].dst = i % 2 ? 12 : 11;
    batch[i].src = 10;
    batch[i].kind = DescriptorKind::Event;
    batch[i].correlation = static_cast<uint64_t>(i);
  }
  // One send of 6400 bytes: the router must split it into 100 descriptors. A ring endpoint
  // has no byte stream: there, 100 sends.
  if (auto* socket = dynamic_cast<SocketEndpoint*>(a.get()))
    ASSERT_EQ(::send(socket->fd(), batch.data(), sizeof(Descriptor) * kCount, 0),
              static_cast<ssize_t>(sizeof(Descriptor) * kCount));
  else
    for (const auto& d : batch) ASSERT_TRUE(a->send(d));
  for (int i = 0; i < kCount; ++i) {
    Endpoint& dst = i % 2 ? *c : *b;
    auto d = dst.receive(5000);
    ASSERT_TRUE(d && d.value()) << "descriptor " << i;
    EXPECT_EQ(d.value()->correlation, static_cast<uint64_t>(i)) << "in order, exactly once";
    EXPECT_EQ(d.value()->dst, i % 2 ? 12u : 11u);
  }
  auto extra = a->receive(20);
  ASSERT_TRUE(extra);
  EXPECT_FALSE(extra.value()) << "nothing goes back to the sender";
  EXPECT_EQ(waitCounters(11, 50, 0).deliveredMsgs, 50u);
  EXPECT_EQ(waitCounters(12, 50, 0).deliveredBytes, 50u * 64);
  EXPECT_EQ(waitCounters(10, 0, 100).sentMsgs, 100u);
}

TEST_P(RouterTest, SplitDescriptorIsDeliveredWhole) {
  auto a = attach(20), b = attach(21);
  auto* socket = dynamic_cast<SocketEndpoint*>(a.get());
  if (!socket) GTEST_SKIP() << "a ring endpoint moves whole descriptors only";
  Descriptor d{};
  d.dst = 21;
  d.correlation = 77;
  const auto* p = reinterpret_cast<const char*>(&d);
  ASSERT_EQ(::send(socket->fd(), p, 20, 0), 20);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_EQ(::send(socket->fd(), p + 20, 44, 0), 44);
  auto got = b->receive(5000);
  ASSERT_TRUE(got && got.value());
  EXPECT_EQ(got.value()->correlation, 77u);
}

TEST_P(RouterTest, UnknownDestinationIsDroppedAndCounted) {
  auto a = attach(30), b = attach(31);
  Descriptor d{};
  d.dst = 999;
  // The send succeeds (the descriptor becomes a dead letter): a sender must never be
  // wedged by a peer that went away.
  ASSERT_TRUE(a->send(d));
  EXPECT_EQ(waitCounters(30, 0, 1).droppedMsgs, 1u);
  d.dst = 31;  // the socket still works afterwards
  ASSERT_TRUE(a->send(d));
  auto got = b->receive(5000);
  ASSERT_TRUE(got && got.value());
}

TEST_P(RouterTest, DetachRemovesTheInstance) {
  auto a = attach(40), b = attach(41);
  router_->detach(41);
  EXPECT_EQ(router_->counters(41).deliveredMsgs, 0u);
  Descriptor d{};
  d.dst = 41;
  ASSERT_TRUE(a->send(d));
  EXPECT_EQ(waitCounters(40, 0, 1).droppedMsgs, 1u);
  auto nothing = b->receive(50);  // its socket may be closed by the detach (an error) too
  EXPECT_FALSE(nothing && nothing.value()) << "a detached instance receives nothing";
  // Re-attaching the id gives a working socket again (a restarted instance).
  auto b2 = attach(41);
  ASSERT_TRUE(a->send(d));
  auto got = b2->receive(5000);
  ASSERT_TRUE(got && got.value());
}

// Isolation (issue 8): instances reach only their own group's and the agent; the agent
// reaches everyone. A refused descriptor is a dead letter, counted as dropped, and the
// sender's socket keeps working. The sender is known by its socket, not by the src it
// writes: forging src does not help.
TEST_P(RouterTest, InstancesReachOnlyTheirOwnGroupAndTheAgent) {
  auto agent = attach(kAgentInstance, kGroupNone);  // the agent is in every group
  auto jobA1 = attach(50, 100), jobA2 = attach(51, 100), jobB = attach(52, 200);
  auto pooled = attach(53, kGroupNone);
  EXPECT_TRUE(delivered(*jobA1, *jobA2, 51, 1, 5000)) << "same group";
  EXPECT_TRUE(delivered(*jobA1, *agent, kAgentInstance, 2, 5000)) << "to the agent";
  EXPECT_TRUE(delivered(*agent, *jobB, 52, 3, 5000)) << "from the agent";
  EXPECT_TRUE(delivered(*pooled, *agent, kAgentInstance, 4, 5000)) << "pooled -> agent";
  EXPECT_FALSE(delivered(*jobA1, *jobB, 52, 5, 100)) << "job A -> job B";
  EXPECT_FALSE(delivered(*jobB, *jobA2, 51, 6, 100)) << "job B -> job A";
  EXPECT_FALSE(delivered(*pooled, *jobA1, 50, 7, 100)) << "an unassigned instance -> a job";
  EXPECT_FALSE(delivered(*jobA1, *pooled, 53, 8, 100)) << "a job -> an unassigned instance";
  Descriptor forged{};
  forged.dst = 51;
  forged.src = kAgentInstance;  // claims to be the agent
  ASSERT_TRUE(jobB->send(forged));
  auto got = jobA2->receive(100);
  EXPECT_FALSE(got && got.value()) << "a forged src does not pass";
  EXPECT_GE(waitCounters(52, 0, 3).droppedMsgs, 2u);
  // Regrouped (an instance given to job A) it reaches A; back in the pool it does not.
  router_->setGroup(52, 100);
  EXPECT_TRUE(delivered(*jobB, *jobA1, 50, 9, 5000)) << "after joining A";
  router_->setGroup(52, kGroupNone);
  EXPECT_FALSE(delivered(*jobB, *jobA1, 50, 10, 100)) << "after going back to the pool";
  EXPECT_TRUE(delivered(*jobA2, *jobA1, 50, 11, 5000)) << "A still works";
}

// A receiver that has waited long enough to sleep (the DPDK router's adaptive polling sleeps
// after 50 us) is woken by the next send; a receive with a timeout returns empty at about
// its timeout; shutdownReceive wakes a receive(-1) blocked in another thread.
TEST_P(RouterTest, SleepingReceiversWakeForSendsTimeoutsAndShutdown) {
  auto a = attach(60), b = attach(61);
  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  auto empty = b->receive(150);
  ASSERT_TRUE(empty);
  EXPECT_FALSE(empty.value());
  const auto waited = Clock::now() - t0;
  EXPECT_GE(waited, std::chrono::milliseconds(140));
  EXPECT_LT(waited, std::chrono::milliseconds(2000));
  std::thread sender([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    Descriptor d{};
    d.dst = 61;
    d.correlation = 5;
    EXPECT_TRUE(a->send(d));
  });
  auto got = b->receive(5000);
  sender.join();
  ASSERT_TRUE(got && got.value());
  EXPECT_EQ(got.value()->correlation, 5u);
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    b->shutdownReceive();
  });
  t0 = Clock::now();
  auto stopped = b->receive(-1);
  stopper.join();
  EXPECT_FALSE(stopped) << "a shut receive is an error";
  EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(5000));
}

INSTANTIATE_TEST_SUITE_P(Routers, RouterTest, ::testing::Values("ebpf", "userspace", "dpdk"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace lifl::dataplane
