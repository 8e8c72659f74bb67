#include "lifl/common/error.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

namespace lifl {

Error Error::withContext(const std::string& context) const {
  return Error{status, code, context + ": " + detail};
}

std::string Error::toJson() const {
  return nlohmann::json{{"error", code}, {"detail", detail}}.dump();
}

std::string Error::toString() const { return code + ": " + detail; }

Error systemError(const std::string& what, int err) {
  return internal("system_error", what + ": " + std::strerror(err));
}

void checkFailed(const char* cond, const char* why, const char* file, int line) {
  std::fprintf(stderr, "lifl: invariant broken at %s:%d: %s (%s)\n", file, line, cond, why);
  std::abort();
}

}  // namespace lifl
