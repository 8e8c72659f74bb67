#include "lifl/common/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace lifl::log {
namespace {
std::atomic<int> g_level{static_cast<int>(Level::Info)};
std::string g_tag = "lifl";
std::mutex g_mutex;
const char* levelName(Level l) {
  switch (l) {
    case Level::Debug:
      return "debug";
    case Level::Info:
      return "info";
    case Level::Warn:
      return "warn";
    case Level::Error:
      return "error";
  }
  return "?";
}
}  // namespace

void setLevel(Level level) { g_level = static_cast<int>(level); }

void setLevelFromEnv() {
  const char* v = std::getenv("LIFL_LOG");
  if (!v) return;
  if (!std::strcmp(v, "debug"))
    setLevel(Level::Debug);
  else if (!std::strcmp(v, "info"))
    setLevel(Level::Info);
  else if (!std::strcmp(v, "warn"))
    setLevel(Level::Warn);
  else if (!std::strcmp(v, "error"))
    setLevel(Level::Error);
}

void setTag(std::string tag) {
  std::lock_guard lock(g_mutex);
  g_tag = std::move(tag);
}

bool enabled(Level level) {
  return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

void write(Level level, const std::string& message) {
  using namespace std::chrono;
  auto ms = duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
  std::lock_guard lock(g_mutex);
  std::fprintf(stderr, "%lld.%03lld %s[%d] %s: %s\n", static_cast<long long>(ms / 1000),
               static_cast<long long>(ms % 1000), g_tag.c_str(), static_cast<int>(getpid()),
               levelName(level), message.c_str());
}

}  // namespace lifl::log
