// Minimal leveled logging to stderr. One line per call, prefixed with the process role so
// that the interleaved output of the agent and its function instances stays readable.
#pragma once

#include <sstream>
#include <string>

namespace lifl::log {

enum class Level { Debug = 0, Info = 1, Warn = 2, Error = 3 };

void setLevel(Level level);
void setLevelFromEnv();  ///< LIFL_LOG=debug|info|warn|error
void setTag(std::string tag);
bool enabled(Level level);
void write(Level level, const std::string& message);

}  // namespace lifl::log

#define LIFL_LOG(level, expr)                                            \
  do {                                                                   \
    if (::lifl::log::enabled(::lifl::log::Level::level)) {               \
      std::ostringstream lifl_log_os_;                                   \
      lifl_log_os_ << expr;                                              \
      ::lifl::log::write(::lifl::log::Level::level, lifl_log_os_.str()); \
    }                                                                    \
  } while (0)
#define LIFL_DEBUG(expr) LIFL_LOG(Debug, expr)
#define LIFL_INFO(expr) LIFL_LOG(Info, expr)
#define LIFL_WARN(expr) LIFL_LOG(Warn, expr)
#define LIFL_ERROR(expr) LIFL_LOG(Error, expr)
