// Descriptor framing over a stream: whatever the stream splits or coalesces, the receiver
// gets exact 64-byte descriptors in order.
#include "lifl/dataplane/endpoint.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <random>
#include <thread>
#include <vector>

namespace lifl::dataplane {
namespace {

TEST(Endpoint, ReassemblesSplitAndCoalescedFrames) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  SocketEndpoint receiver(UniqueFd(sv[0]), 2);
  UniqueFd writer(sv[1]);
  constexpr int kCount = 500;
  std::vector<Descriptor> sent(kCount);
  for (int i = 0; i < kCount; ++i) {
    sent[i].dst = 2;
    sent[i].src = 9;
    sent[i].kind = DescriptorKind::Update;
    sent[i].correlation = 1000 + i;
    sent[i].offset = 64ull * i;
    sent[i].generation = 7 + i;
  }
  std::thread t([&] {
    std::mt19937 rng(7);
    const auto* bytes = reinterpret_cast<const char*>(sent.data());
    size_t total = sent.size() * sizeof(Descriptor), off = 0;
    while (off < total) {  // chunks of 1..300 bytes: splits frames and joins several
      size_t n = std::min<size_t>(total - off, 1 + rng() % 300);
      ASSERT_EQ(::send(writer.get(), bytes + off, n, 0), static_cast<ssize_t>(n));
      off += n;
    }
  });
  for (int i = 0; i < kCount; ++i) {
    auto d = receiver.receive(5000);
    ASSERT_TRUE(d && d.value()) << "frame " << i;
    EXPECT_EQ(d.value()->correlation, 1000u + i);
    EXPECT_EQ(d.value()->generation, 7u + i);
    EXPECT_EQ(d.value()->offset, 64ull * i);
  }
  t.join();
  auto none = receiver.receive(10);
  ASSERT_TRUE(none);
  EXPECT_FALSE(none.value()) << "no extra frame";
  writer.reset();
  EXPECT_FALSE(receiver.receive(1000)) << "EOF is an error";
}

TEST(Endpoint, SendStampsSource) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  SocketEndpoint a(UniqueFd(sv[0]), 5), b(UniqueFd(sv[1]), 6);
  Descriptor d{};
  d.dst = 6;
  d.src = 1234;  // the SDK stamps the sending endpoint
  ASSERT_TRUE(a.send(d));
  auto got = b.receive(1000);
  ASSERT_TRUE(got && got.value());
  EXPECT_EQ(got.value()->src, 5u);
}

}  // namespace
}  // namespace lifl::dataplane
