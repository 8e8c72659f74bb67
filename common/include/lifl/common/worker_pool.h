// A fixed set of worker threads that share the iterations of a loop with its caller
// (parallelFor). For work split into pieces too short for a thread of their own each time:
// a KV-retrieval step selects units for 8 KV heads in each of 16 layers, ~0.2 ms a head, and
// starting threads for them would cost as much as the work.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace lifl {

class WorkerPool {
 public:
  explicit WorkerPool(unsigned workers);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Runs fn(i) for every i in [0, count), on the workers and the calling thread; returns when
  /// all have run. Calls from several threads take turns; a call from inside a loop (on a
  /// worker, or on the caller while its loop runs) runs inline.
  void parallelFor(uint32_t count, const std::function<void(uint32_t)>& fn);

  /// One pool per process: a worker per core beyond the caller's, at most 15.
  static WorkerPool& shared();

 private:
  void work();
  void runIterations();

  std::mutex turn_;  ///< one parallelFor at a time
  std::mutex mutex_;
  std::condition_variable wake_, finished_;
  const std::function<void(uint32_t)>* fn_ = nullptr;
  uint32_t count_ = 0;
  std::atomic<uint32_t> next_{0};
  uint64_t generation_ = 0;
  unsigned busy_ = 0;  ///< workers still in the current generation
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace lifl
