// One error style for the whole code base (STYLE.md 5): every fallible call returns
// lifl::Result<T>. An Error carries the HTTP status and the API short code, so the gateway
// can answer {"error","detail"} without translating. Broken invariants are not errors: they
// abort through LIFL_CHECK. Client input never reaches LIFL_CHECK.
#pragma once

#include <boost/outcome.hpp>
#include <string>
#include <utility>  // before Boost.Outcome/Asio: g++ 12 misses std::exchange otherwise

namespace lifl {

namespace outcome = BOOST_OUTCOME_V2_NAMESPACE;

struct Error {
  int status = 500;    ///< HTTP status the gateway answers with
  std::string code;    ///< short machine-readable code, e.g. "malformed_safetensors"
  std::string detail;  ///< one sentence for a person

  /// Returns the error with `context` prepended to its detail, for adding context on the way up.
  Error withContext(const std::string& context) const;
  std::string toJson() const;
  std::string toString() const;
};

template <class T>
using Result = outcome::result<T, Error, outcome::policy::terminate>;

inline auto success() { return outcome::success(); }
template <class T>
auto success(T&& v) {
  return outcome::success(std::forward<T>(v));
}

inline Error makeError(int status, std::string code, std::string detail) {
  return Error{status, std::move(code), std::move(detail)};
}
/// Convenience constructors for the status codes used by API.md.
inline Error badRequest(std::string code, std::string detail) {
  return makeError(400, std::move(code), std::move(detail));
}
/// A missing, malformed, forged or expired credential (`unauthorized`).
inline Error unauthorized(std::string detail) {
  return makeError(401, "unauthorized", std::move(detail));
}
/// A valid credential that does not reach the resource (`forbidden`).
inline Error forbidden(std::string detail) {
  return makeError(403, "forbidden", std::move(detail));
}
inline Error notFound(std::string code, std::string detail) {
  return makeError(404, std::move(code), std::move(detail));
}
inline Error conflict(std::string code, std::string detail) {
  return makeError(409, std::move(code), std::move(detail));
}
inline Error unprocessable(std::string code, std::string detail) {
  return makeError(422, std::move(code), std::move(detail));
}
inline Error unavailable(std::string code, std::string detail) {
  return makeError(503, std::move(code), std::move(detail));
}
inline Error internal(std::string code, std::string detail) {
  return makeError(500, std::move(code), std::move(detail));
}
/// An Error from errno after a failed system call.
Error systemError(const std::string& what, int err);

[[noreturn]] void checkFailed(const char* cond, const char* why, const char* file, int line);

}  // namespace lifl

#define LIFL_CHECK(cond, why)                                           \
  do {                                                                  \
    if (!(cond)) ::lifl::checkFailed(#cond, (why), __FILE__, __LINE__); \
  } while (0)

#define LIFL_TRY BOOST_OUTCOME_TRY
// Wrapped so that it is one statement (safe after an unbraced if/for).
#define LIFL_TRYV(...)               \
  do {                               \
    BOOST_OUTCOME_TRYV(__VA_ARGS__); \
  } while (0)
