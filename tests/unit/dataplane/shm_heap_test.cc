#include "lifl/dataplane/shm_heap.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <thread>
#include <vector>

namespace lifl::dataplane {
namespace {

struct Region {
  explicit Region(size_t n) : bytes(n), mem(static_cast<std::byte*>(std::aligned_alloc(4096, n))) {}
  ~Region() { std::free(mem); }
  size_t bytes;
  std::byte* mem;
};

TEST(ShmHeap, ClassesGrowByAtMostAQuarter) {
  for (uint8_t c = 1; c < ShmHeap::kClasses; ++c) {
    ASSERT_GT(ShmHeap::classBytes(c), ShmHeap::classBytes(c - 1));
    ASSERT_LE(ShmHeap::classBytes(c), ShmHeap::classBytes(c - 1) * 5 / 4 + 1);
    ASSERT_EQ(ShmHeap::classBytes(c) % 64, 0u);
  }
}

TEST(ShmHeap, BlocksNeverOverlapUnderConcurrency) {
  Region r(64 << 20);
  ShmHeap* heap = ShmHeap::format(r.mem, r.bytes, 4096);
  ASSERT_NE(heap, nullptr);
  ASSERT_EQ(ShmHeap::attach(r.mem, r.bytes), heap);
  std::atomic<bool> bad{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t));
      std::vector<std::tuple<uint64_t, uint8_t, uint64_t>> held;
      for (int i = 0; i < 20000 && !bad; ++i) {
        if (held.size() < 64 && (held.empty() || rng() % 3)) {
          const uint64_t want = 64 + rng() % 20000;
          uint8_t c = 0;
          const uint64_t off = heap->allocate(want, c);
          if (!off) continue;
          if (ShmHeap::classBytes(c) < want) bad = true;
          std::memset(r.mem + off, t + 1, want);  // our pattern: any overlap breaks it
          held.emplace_back(off, c, want);
        } else {
          const size_t k = rng() % held.size();
          auto [off, c, want] = held[k];
          for (uint64_t b = 0; b < want; b += 61)
            if (r.mem[off + b] != std::byte(t + 1)) bad = true;
          heap->free(off, c);
          held.erase(held.begin() + static_cast<long>(k));
        }
      }
      for (auto [off, c, want] : held) heap->free(off, c);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_FALSE(bad) << "two live blocks overlapped";
}

TEST(ShmHeap, ExhaustionAndReuseOfLargerBlocks) {
  Region r(8 << 20);
  ShmHeap* heap = ShmHeap::format(r.mem, r.bytes, 64);
  std::vector<std::pair<uint64_t, uint8_t>> big;
  for (;;) {
    uint8_t c = 0;
    uint64_t off = heap->allocate(1 << 20, c);
    if (!off) break;
    big.emplace_back(off, c);
  }
  ASSERT_GE(big.size(), 5u);
  uint8_t c = 0;
  EXPECT_EQ(heap->allocate(1 << 20, c), 0u) << "full";
  while (heap->allocate(1000, c)) {  // use up the bump region's tail as well
  }
  heap->free(big.back().first, big.back().second);
  // The bump region is spent, so a small request is served from the freed large block.
  const uint64_t small = heap->allocate(1000, c);
  EXPECT_EQ(small, big.back().first);
  EXPECT_EQ(c, big.back().second);
}

TEST(ShmHeap, LiveTable) {
  Region r(4 << 20);
  ShmHeap* heap = ShmHeap::format(r.mem, r.bytes, 3);
  uint32_t a = heap->registerLive(1024), b = heap->registerLive(2048), c = heap->registerLive(4096);
  EXPECT_NE(a, b);
  EXPECT_EQ(heap->registerLive(8192), UINT32_MAX) << "table full";
  heap->unregisterLive(b, 2048);
  std::map<uint64_t, int> seen;
  heap->forEachLive([&](uint64_t off) { seen[off]++; });
  EXPECT_EQ(seen, (std::map<uint64_t, int>{{1024, 1}, {4096, 1}}));
  (void)c;
}

}  // namespace
}  // namespace lifl::dataplane
