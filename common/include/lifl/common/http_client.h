// A blocking HTTP/1.1 client (Boost.Beast) for the CLI, the load generator and the
// controller/agent protocol: one keep-alive connection, bodies sent from the caller's memory
// without a copy, and an optional deadline on every connect and request.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "lifl/common/error.h"
#include "lifl/common/tls_context.h"

namespace lifl {

struct HttpResponse {
  int status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  ///< lower-case names
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

using HeaderList = std::vector<std::pair<std::string, std::string>>;

class HttpClient {
 public:
  /// @param url http://host:port or https://host:port (a path, if any, is ignored); https
  ///        verifies the server's certificate and host name
  static Result<std::unique_ptr<HttpClient>> connect(const std::string& url,
                                                     double timeoutSeconds = 0,
                                                     const TlsOptions& tls = {});
  ~HttpClient();

  Result<HttpResponse> request(std::string_view method, const std::string& target,
                               const HeaderList& headers = {}, const void* body = nullptr,
                               uint64_t bodySize = 0);
  Result<HttpResponse> get(const std::string& target) { return request("GET", target); }
  /// Bounds each later connect and request (0: no bound, the default).
  void setTimeout(double seconds) { timeoutSeconds_ = seconds; }
  /// Sends `Authorization: Bearer <credential>` with every later request ("": none).
  void setBearer(std::string credential) { bearer_ = std::move(credential); }

 private:
  struct Impl;
  explicit HttpClient(std::unique_ptr<Impl> impl);
  Result<void> reconnect();
  void arm();
  std::unique_ptr<Impl> impl_;
  double timeoutSeconds_ = 0;
  std::string bearer_;
};

/// Splits http://host:port (or https://) into host and port (default 8080).
Result<std::pair<std::string, std::string>> parseUrl(const std::string& url);
/// Splits a request target into its path segments (the query is dropped).
std::vector<std::string> splitPath(std::string_view target);
/// The value of `key` in the target's query string ("" when absent); no %-decoding.
std::string queryParam(std::string_view target, std::string_view key);
/// The error of a non-2xx response, from API.md's JSON body when there is one.
Error errorOf(const HttpResponse& response);

}  // namespace lifl
