#include "lifl/dataplane/robust_mutex.h"

#include <cerrno>
#include <ctime>

#include "lifl/common/error.h"

namespace lifl::dataplane {

void RobustMutex::init(int type) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutexattr_settype(&attr, type);
  int rc = pthread_mutex_init(&m_, &attr);
  pthread_mutexattr_destroy(&attr);
  LIFL_CHECK(rc == 0, "pthread_mutex_init of a robust shared mutex failed");
}

bool RobustMutex::recover(int rc) {
  if (rc == 0) return true;
  if (rc == EOWNERDEAD) {  // the holder died: its critical section is abandoned, not torn apart
    pthread_mutex_consistent(&m_);
    return true;
  }
  return false;
}

void RobustMutex::lock() {
  LIFL_CHECK(recover(pthread_mutex_lock(&m_)), "robust mutex is unrecoverable");
}

bool RobustMutex::try_lock() { return recover(pthread_mutex_trylock(&m_)); }

bool RobustMutex::timed_lock(const boost::posix_time::ptime& abs_time) {
  if (abs_time.is_pos_infinity()) {
    lock();
    return true;
  }
  static const boost::posix_time::ptime kEpoch(boost::gregorian::date(1970, 1, 1));
  auto since = abs_time - kEpoch;
  timespec ts{};
  ts.tv_sec = since.total_seconds();
  ts.tv_nsec = static_cast<long>(since.fractional_seconds() *
                                 (1000000000 / boost::posix_time::time_duration::ticks_per_second()));
  return recover(pthread_mutex_timedlock(&m_, &ts));
}

}  // namespace lifl::dataplane
