// WorkerPool: every iteration runs exactly once, whatever the pool's size, and calls from
// several threads take turns without losing iterations.
#include "lifl/common/worker_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace lifl {
namespace {

TEST(WorkerPool, RunsEveryIterationOnce) {
  for (unsigned workers : {0u, 1u, 3u, 8u}) {
    WorkerPool pool(workers);
    for (uint32_t count : {0u, 1u, 7u, 10000u}) {
      std::vector<std::atomic<uint32_t>> runs(count);
      pool.parallelFor(count, [&](uint32_t i) { runs[i]++; });
      for (uint32_t i = 0; i < count; ++i)
        ASSERT_EQ(runs[i].load(), 1u) << workers << " workers, " << count << " iterations, i " << i;
    }
  }
}

TEST(WorkerPool, CallersFromSeveralThreadsTakeTurns) {
  WorkerPool pool(3);
  std::atomic<uint64_t> sum{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t)
    callers.emplace_back([&] {
      for (int rep = 0; rep < 50; ++rep) pool.parallelFor(100, [&](uint32_t i) { sum += i; });
    });
  for (auto& c : callers) c.join();
  EXPECT_EQ(sum.load(), 4ull * 50 * (99 * 100 / 2));
}

TEST(WorkerPool, ALoopInsideALoopRunsInline) {
  WorkerPool pool(3);
  std::vector<std::atomic<uint32_t>> runs(16 * 16);
  pool.parallelFor(16, [&](uint32_t i) {  // would deadlock if the inner call waited its turn
    pool.parallelFor(16, [&](uint32_t j) { runs[i * 16 + j]++; });
  });
  for (auto& r : runs) ASSERT_EQ(r.load(), 1u);
}

}  // namespace
}  // namespace lifl
