// The only translation unit of the control plane that instantiates Beast's server side.
#include "lifl/control/http_server.h"

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast.hpp>
#include <boost/beast/ssl.hpp>
#include <optional>
#include <thread>
#include <utility>  // before Asio: g++ 12 needs std::exchange for asio::awaitable

#include "lifl/common/http_client.h"
#include "lifl/common/log.h"
#include "lifl/common/tls_handshake.h"

namespace lifl::control {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;

struct HttpServer::Impl {
  Impl(HttpHandler h, uint64_t limit, ServerTlsFiles files)
      : handler(std::move(h)), maxBody(limit), tlsFiles(std::move(files)) {}
  HttpHandler handler;
  uint64_t maxBody;
  ServerTlsFiles tlsFiles;
  std::optional<asio::ssl::context> tls;  ///< tlsFiles enabled: HTTPS only
  asio::io_context ioc;
  std::optional<tcp::acceptor> acceptor;
  std::vector<std::thread> threads;

  /// One connection: the TLS handshake first where it is configured (bounded, so a silent
  /// peer cannot hold a connection), then its requests.
  awaitable<void> session(tcp::socket socket) {
    socket.set_option(tcp::no_delay(true));
    if (!tls) {
      beast::tcp_stream stream(std::move(socket));
      co_await serve(stream);
      beast::error_code ignored;
      stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
      co_return;
    }
    beast::ssl_stream<beast::tcp_stream> stream(beast::tcp_stream(std::move(socket)), *tls);
    if (!co_await acceptTls(stream, std::chrono::seconds(10))) co_return;
    co_await serve(stream);
    co_await closeTls(stream);
  }

  template <class Stream>
  awaitable<void> serve(Stream& stream) {
    beast::flat_buffer buffer;
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.body_limit(maxBody);
      // idle keep-alive connections close
      beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(60));
      beast::error_code ec;
      co_await http::async_read(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
      HttpReply reply;
      bool keepAlive = false;
      if (ec == http::error::end_of_stream || ec == asio::error::eof ||
          ec == beast::error::timeout || ec == asio::error::connection_reset ||
          ec == asio::ssl::error::stream_truncated)
        break;
      if (ec == http::error::body_limit) {
        reply = HttpReply::error(makeError(413, "body_too_large", "the body is too large"));
      } else if (ec) {
        reply = HttpReply::error(badRequest("malformed_request", "cannot parse: " + ec.message()));
      } else {
        auto& req = parser.get();
        keepAlive = req.keep_alive();
        HttpRequest in;
        in.method = std::string(req.method_string());
        in.target = std::string(req.target());
        in.path = splitPath(in.target);
        in.contentType = std::string(req[http::field::content_type]);
        in.authorization = std::string(req[http::field::authorization]);
        in.body = std::move(req.body());
        try {
          reply = handler(in);
        } catch (const std::exception& e) {  // a handler bug must not take the server down
          LIFL_ERROR("handler for " << in.method << " " << in.target << ": " << e.what());
          reply = HttpReply::error(internal("internal_error", e.what()));
        }
      }
      http::response<http::string_body> res{static_cast<http::status>(reply.status), 11};
      res.set(http::field::server, "lifl-controller");
      if (!reply.body.empty() || reply.status != 204)
        res.set(http::field::content_type, reply.contentType);
      for (auto& [k, v] : reply.headers) res.set(k, v);
      res.body() = std::move(reply.body);
      res.keep_alive(keepAlive);
      res.prepare_payload();
      co_await http::async_write(stream, res, asio::redirect_error(use_awaitable, ec));
      if (ec || !keepAlive) break;
    }
  }

  awaitable<void> listen() {
    for (;;) {
      beast::error_code ec;
      tcp::socket socket = co_await acceptor->async_accept(asio::make_strand(ioc),
                                                           asio::redirect_error(use_awaitable, ec));
      if (ec == asio::error::operation_aborted) co_return;
      if (ec) continue;
      auto executor = socket.get_executor();
      asio::co_spawn(executor, session(std::move(socket)), asio::detached);
    }
  }
};

HttpServer::HttpServer(HttpHandler handler, uint64_t maxBodyBytes, ServerTlsFiles tls)
    : impl_(std::make_unique<Impl>(std::move(handler), maxBodyBytes, std::move(tls))) {}

HttpServer::~HttpServer() { stop(); }

Result<uint16_t> HttpServer::start(const std::string& bind, uint16_t port, uint32_t threads) {
  if (impl_->tlsFiles.enabled()) {
    LIFL_TRY(ctx, serverTlsContext(impl_->tlsFiles, "tls."));
    impl_->tls.emplace(std::move(ctx));
  }
  beast::error_code ec;
  auto address = asio::ip::make_address(bind, ec);
  if (ec) return badRequest("invalid_config", "bind address " + bind + " is not an IP address");
  tcp::endpoint endpoint(address, port);
  auto& acceptor = impl_->acceptor.emplace(impl_->ioc);
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    return internal("bind_failed",
                    "cannot listen on " + bind + ":" + std::to_string(port) + ": " + ec.message());
  const uint16_t bound = acceptor.local_endpoint().port();
  asio::co_spawn(impl_->ioc, impl_->listen(), asio::detached);
  for (uint32_t i = 0; i < std::max<uint32_t>(threads, 1); ++i)
    impl_->threads.emplace_back([this] { impl_->ioc.run(); });
  return bound;
}

void HttpServer::stop() {
  if (!impl_ || impl_->threads.empty()) return;
  impl_->ioc.stop();
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
}

}  // namespace lifl::control
