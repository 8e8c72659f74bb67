#include "lifl/common/worker_pool.h"

#include <algorithm>

namespace lifl {
namespace {

/// Set on the pool's workers, and on a caller while its loop runs: a parallelFor from inside
/// one (a kernel called by a parallel selection) runs inline instead of waiting for workers
/// that are busy with the loop that called it.
thread_local bool insideLoop = false;

struct InsideLoop {
  bool saved = insideLoop;
  InsideLoop() { insideLoop = true; }
  ~InsideLoop() { insideLoop = saved; }
};

}  // namespace

WorkerPool::WorkerPool(unsigned workers) {
  for (unsigned i = 0; i < workers; ++i) workers_.emplace_back([this] { work(); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

WorkerPool& WorkerPool::shared() {
  static WorkerPool pool(std::min(15u, std::max(1u, std::thread::hardware_concurrency()) - 1));
  return pool;
}

void WorkerPool::runIterations() {
  for (uint32_t i = next_++; i < count_; i = next_++) (*fn_)(i);
}

void WorkerPool::parallelFor(uint32_t count, const std::function<void(uint32_t)>& fn) {
  if (count == 0) return;
  if (insideLoop || workers_.empty() || count == 1) {
    for (uint32_t i = 0; i < count; ++i) fn(i);
    return;
  }
  std::lock_guard turn(turn_);
  InsideLoop inside;
  {
    std::lock_guard lock(mutex_);
    fn_ = &fn;
    count_ = count;
    next_ = 0;
    busy_ = static_cast<unsigned>(workers_.size());
    generation_++;
  }
  wake_.notify_all();
  runIterations();
  std::unique_lock lock(mutex_);
  finished_.wait(lock, [&] { return busy_ == 0; });  // no worker may still hold fn
  fn_ = nullptr;
}

void WorkerPool::work() {
  insideLoop = true;
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
    }
    runIterations();
    std::lock_guard lock(mutex_);
    if (--busy_ == 0) finished_.notify_one();
  }
}

}  // namespace lifl
