// Process-shared mutexes that survive the death of their holder. The object store's
// allocator lock is taken by function instances, and the platform kills instances (crash,
// kill -9, scale-down) at any time: with Boost.Interprocess's default mutex a kill inside
// allocate() would deadlock the node. A robust pthread mutex hands the next locker
// EOWNERDEAD instead, which we mark consistent and carry on. The allocator's own critical
// sections are short (a tree insert/erase), so the window for a torn update is tiny; the
// agent's reclaim walks only our object list, which we keep consistent by construction.
#pragma once

#include <pthread.h>

#include <boost/date_time/posix_time/posix_time_types.hpp>

namespace lifl::dataplane {

class RobustMutex {
 public:
  RobustMutex() { init(PTHREAD_MUTEX_NORMAL); }
  RobustMutex(const RobustMutex&) = delete;
  RobustMutex& operator=(const RobustMutex&) = delete;
  ~RobustMutex() { pthread_mutex_destroy(&m_); }

  void lock();
  bool try_lock();
  bool timed_lock(const boost::posix_time::ptime& abs_time);
  void unlock() { pthread_mutex_unlock(&m_); }

 protected:
  explicit RobustMutex(int type) { init(type); }

 private:
  void init(int type);
  bool recover(int rc);
  pthread_mutex_t m_;
};

class RobustRecursiveMutex : public RobustMutex {
 public:
  RobustRecursiveMutex() : RobustMutex(PTHREAD_MUTEX_RECURSIVE) {}
};

/// Mutex family for boost::interprocess::rbtree_best_fit and its segment manager.
struct RobustMutexFamily {
  using mutex_type = RobustMutex;
  using recursive_mutex_type = RobustRecursiveMutex;
};

}  // namespace lifl::dataplane
