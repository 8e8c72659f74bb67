// A small HTTP/1.1 server (Boost.Beast) for the controller's JSON API. Handlers are plain
// functions run on the server's threads; bodies are small (job specs, node records,
// admissions), so they are read whole. The agent's gateway, which streams model-sized
// bodies into the object store, is a separate server (data-plane/src/gateway.cc).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lifl/common/error.h"
#include "lifl/common/tls_context.h"

namespace lifl::control {

struct HttpRequest {
  std::string method;  ///< "GET", "POST", ...
  std::string target;  ///< path and query as sent
  std::vector<std::string> path;
  std::string contentType;
  std::string authorization;  ///< the Authorization header, as sent
  std::string body;
};

struct HttpReply {
  HttpReply(int s = 200, std::string b = "", std::string type = "application/json")
      : status(s), body(std::move(b)), contentType(std::move(type)) {}
  int status;
  std::string body;
  std::string contentType;
  std::vector<std::pair<std::string, std::string>> headers;

  static HttpReply json(int status, std::string body) { return {status, std::move(body)}; }
  static HttpReply error(const Error& e) { return {e.status, e.toJson()}; }
};

using HttpHandler = std::function<HttpReply(const HttpRequest&)>;

class HttpServer {
 public:
  /// @param maxBodyBytes larger bodies are answered 413 without being read
  /// @param tls where enabled, HTTPS only (and mTLS with a client CA)
  HttpServer(HttpHandler handler, uint64_t maxBodyBytes, ServerTlsFiles tls = {});
  ~HttpServer();
  /// Binds bind:port (0 picks a free port) and serves on `threads` threads. A TLS file that
  /// cannot be used is an invalid_config error naming its `tls.` key.
  Result<uint16_t> start(const std::string& bind, uint16_t port, uint32_t threads);
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lifl::control
