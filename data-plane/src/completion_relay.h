// A completion passed to another node's gateway (docs/llm.md "In a cluster"): a node without
// the model a request names relays it to one that serves it and passes the answer back as
// it comes, an event stream chunk by chunk. Included by gateway.cc only, so that Beast's
// client side is compiled in the gateway's translation unit (build time on 2 cores).
#pragma once

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast.hpp>
#include <boost/beast/ssl.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <utility>

#include "lifl/common/http_client.h"

namespace lifl::dataplane::relay {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;

/// Marks a relayed request, so that it is never relayed again (routes a heartbeat old may
/// name a node that no longer serves the model).
inline constexpr const char* kRelayedHeader = "lifl-relayed-by";

struct Outcome {
  bool answered = false;  ///< false: nothing reached the client, another node may be tried
  int status = 0;
  bool keepAlive = true;  ///< false: the client's connection must close (a stream cut short)
  std::string why;        ///< where it failed, for the log
};

/// Where a fetched answer's body of the given length goes (nullptr: into a string).
using Sink = std::function<std::byte*(uint64_t)>;

struct Request {
  std::string body;
  HeaderList headers;
  unsigned version = 11;  ///< the client's HTTP version
  bool keepAlive = true;  ///< the client's
  std::chrono::steady_clock::duration connectTimeout, answerTimeout;
};

namespace detail {

inline Outcome failed(Outcome& out, const std::string& step, const beast::error_code& ec) {
  out.why = step + ": " + ec.message();
  return out;
}

/// The head of a chunked answer, on its own (its chunks follow).
template <class Down>
awaitable<beast::error_code> writeHead(Down& down, http::response<http::empty_body>& head) {
  beast::error_code ec;
  http::response_serializer<http::empty_body> serializer{head};
  co_await http::async_write_header(down, serializer, asio::redirect_error(use_awaitable, ec));
  co_return ec;
}

/// POSTs the request (a JSON body) to `target` on `up`.
template <class Up>
awaitable<beast::error_code> send(Up& up, const std::string& host, std::string_view target,
                                  const Request& r) {
  http::request<http::string_body> req{http::verb::post,
                                       beast::string_view(target.data(), target.size()), 11};
  req.set(http::field::host, host);
  req.set(http::field::content_type, "application/json");
  for (const auto& [k, v] : r.headers) req.set(k, v);
  req.body() = r.body;
  req.prepare_payload();
  beast::error_code ec;
  beast::get_lowest_layer(up).expires_after(r.answerTimeout);
  co_await http::async_write(up, req, asio::redirect_error(use_awaitable, ec));
  co_return ec;
}

/// Sends the request on `up` and passes the answer to `down`.
template <class Up, class Down>
awaitable<Outcome> pass(Up& up, Down& down, const std::string& host, const Request& r) {
  Outcome out;
  beast::error_code ec = co_await send(up, host, "/v1/completions", r);
  if (ec) co_return failed(out, "sending the request", ec);
  beast::flat_buffer buffer;
  http::response_parser<http::buffer_body> parser;
  // Bounded in time (answerTimeout without progress), not in bytes.
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  co_await http::async_read_header(up, buffer, parser, asio::redirect_error(use_awaitable, ec));
  if (ec) co_return failed(out, "reading the answer", ec);
  out.answered = true;
  out.status = static_cast<int>(parser.get().result_int());
  const std::string type(parser.get()[http::field::content_type]);
  const bool stream = type.rfind("text/event-stream", 0) == 0;

  http::response<http::empty_body> head{parser.get().result(), r.version};
  head.set(http::field::server, "lifl");
  head.set(http::field::content_type, type);
  if (stream) head.set(http::field::cache_control, "no-cache");
  head.chunked(stream);
  head.keep_alive(r.keepAlive);
  std::string whole;  // an answer that is not a stream goes whole, with its length
  bool headSent = false;
  char chunk[16 << 10];
  while (!parser.is_done()) {
    parser.get().body().data = chunk;
    parser.get().body().size = sizeof chunk;
    beast::get_lowest_layer(up).expires_after(r.answerTimeout);
    co_await http::async_read_some(up, buffer, parser, asio::redirect_error(use_awaitable, ec));
    if (ec == http::error::need_buffer) ec = {};
    if (ec) break;
    const size_t n = sizeof chunk - parser.get().body().size;
    if (n == 0) continue;
    if (!stream) {
      whole.append(chunk, n);
      continue;
    }
    if (!headSent) {
      headSent = true;
      ec = co_await writeHead(down, head);
      if (ec) break;
    }
    co_await asio::async_write(down, http::make_chunk(asio::buffer(chunk, n)),
                               asio::redirect_error(use_awaitable, ec));
    if (ec) break;
  }
  if (!parser.is_done()) {  // cut short: the client must not take it for the whole answer
    failed(out, "passing the answer's body", ec);
    out.keepAlive = false;
    out.answered = headSent;  // where nothing was passed on, another node may answer
    co_return out;
  }
  if (!stream) {
    http::response<http::string_body> res{parser.get().result(), r.version};
    res.set(http::field::server, "lifl");
    res.set(http::field::content_type, type);
    res.body() = std::move(whole);
    res.keep_alive(r.keepAlive);
    res.prepare_payload();
    co_await http::async_write(down, res, asio::redirect_error(use_awaitable, ec));
  } else {
    if (!headSent) ec = co_await writeHead(down, head);
    if (!ec)
      co_await asio::async_write(down, http::make_chunk_last(),
                                 asio::redirect_error(use_awaitable, ec));
  }
  if (ec) out.keepAlive = false;
  co_return out;
}

}  // namespace detail

/// Connects to `url` (http:// or, with `tls`, https://) and co_awaits use(stream, host) on
/// the connection.
template <class Use>
awaitable<Outcome> connected(const std::string& url, asio::ssl::context* tls,
                             std::chrono::steady_clock::duration connectTimeout, Use use) {
  Outcome out;
  auto hostPort = parseUrl(url);
  const bool https = url.rfind("https://", 0) == 0;
  if (!hostPort || (https && !tls)) {
    out.why = "not a URL this node can call: " + url;
    co_return out;
  }
  const std::string host = hostPort.value().first, port = hostPort.value().second;
  auto executor = co_await asio::this_coro::executor;
  tcp::resolver resolver(executor);
  beast::error_code ec;
  auto endpoints =
      co_await resolver.async_resolve(host, port, asio::redirect_error(use_awaitable, ec));
  if (ec) co_return detail::failed(out, "resolving " + host, ec);
  beast::tcp_stream plain(executor);
  plain.expires_after(connectTimeout);
  co_await plain.async_connect(endpoints, asio::redirect_error(use_awaitable, ec));
  if (ec) co_return detail::failed(out, "connecting", ec);
  plain.socket().set_option(tcp::no_delay(true));
  if (!https) co_return co_await use(plain, host);
  beast::ssl_stream<beast::tcp_stream> secure(std::move(plain), *tls);
  if (!SSL_set_tlsext_host_name(secure.native_handle(), host.c_str())) {
    out.why = "the TLS server name " + host;
    co_return out;
  }
  secure.set_verify_callback(asio::ssl::host_name_verification(host));
  co_await secure.async_handshake(asio::ssl::stream_base::client,
                                  asio::redirect_error(use_awaitable, ec));
  if (ec) co_return detail::failed(out, "the TLS handshake", ec);
  co_return co_await use(secure, host);
}

/// POSTs the request to `url`/v1/completions and passes the answer to `down`, the client's
/// stream.
template <class Down>
awaitable<Outcome> relayCompletion(Down& down, const std::string& url, asio::ssl::context* tls,
                                   const Request& r) {
  auto pass = [&](auto& up, const std::string& host) { return detail::pass(up, down, host, r); };
  co_return co_await connected(url, tls, r.connectTimeout, pass);
}

namespace detail {

/// POSTs the request to `target` on `up` and reads the answer: a 200's body of known length
/// into the memory into(length) gives (where it gives some), any other into got.body.
template <class Up>
awaitable<Outcome> fetch(Up& up, const std::string& host, const std::string& target,
                         const Request& r, HttpResponse& got, const Sink& into) {
  Outcome out;
  beast::error_code ec = co_await send(up, host, target, r);
  if (ec) co_return failed(out, "sending the request", ec);
  beast::flat_buffer buffer;
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());  // bounded in time
  beast::get_lowest_layer(up).expires_after(r.answerTimeout);
  co_await http::async_read_header(up, buffer, parser, asio::redirect_error(use_awaitable, ec));
  if (ec) co_return failed(out, "reading the answer", ec);
  got.status = static_cast<int>(parser.get().result_int());
  got.headers["content-type"] = std::string(parser.get()[http::field::content_type]);
  const auto length = parser.content_length();
  std::byte* at = got.status == 200 && length ? into(*length) : nullptr;
  char chunk[16 << 10];
  uint64_t have = 0;
  while (!parser.is_done()) {
    auto& body = parser.get().body();
    body.data = at ? static_cast<void*>(at + have) : chunk;
    body.size = at ? *length - have : sizeof chunk;
    beast::get_lowest_layer(up).expires_after(r.answerTimeout);
    co_await http::async_read_some(up, buffer, parser, asio::redirect_error(use_awaitable, ec));
    if (ec == http::error::need_buffer) ec = {};
    if (ec) co_return failed(out, "reading the answer's body", ec);
    const uint64_t n = (at ? *length - have : sizeof chunk) - body.size;
    if (!at) got.body.append(chunk, n);
    have += n;
  }
  out.answered = true;
  out.status = got.status;
  co_return out;
}

}  // namespace detail

/// POSTs the request to `url` + `target` and reads the answer as detail::fetch does.
inline awaitable<Outcome> fetch(const std::string& url, const std::string& target,
                                asio::ssl::context* tls, const Request& r, HttpResponse& got,
                                const Sink& into) {
  auto fetchOn = [&](auto& up, const std::string& host) {
    return detail::fetch(up, host, target, r, got, into);
  };
  co_return co_await connected(url, tls, r.connectTimeout, fetchOn);
}

}  // namespace lifl::dataplane::relay
