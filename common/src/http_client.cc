#include "lifl/common/http_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <nlohmann/json.hpp>
#include <utility>

namespace lifl {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

struct HttpClient::Impl {
  std::string host, port;
  asio::io_context ioc;
  std::optional<asio::ssl::context> tls;  ///< https only
  std::optional<beast::tcp_stream> stream;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tlsStream;
  beast::flat_buffer buffer;

  bool connected() const { return stream || tlsStream; }
  void drop() {
    stream.reset();
    tlsStream.reset();
  }
  beast::tcp_stream& lowest() { return tlsStream ? beast::get_lowest_layer(*tlsStream) : *stream; }
  /// Runs f on whichever stream the connection has.
  template <class F>
  auto with(F&& f) {
    return tlsStream ? f(*tlsStream) : f(*stream);
  }
};

HttpClient::HttpClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpClient::~HttpClient() {
  if (impl_ && impl_->connected()) {
    beast::error_code ec;
    impl_->lowest().socket().shutdown(tcp::socket::shutdown_both, ec);
  }
}

Result<std::pair<std::string, std::string>> parseUrl(const std::string& url) {
  std::string rest = url;
  if (rest.rfind("http://", 0) == 0)
    rest = rest.substr(7);
  else if (rest.rfind("https://", 0) == 0)
    rest = rest.substr(8);
  else if (rest.find("://") != std::string::npos)
    return badRequest("bad_arguments", "only http:// and https:// URLs are supported: " + url);
  if (auto slash = rest.find('/'); slash != std::string::npos) rest = rest.substr(0, slash);
  auto colon = rest.rfind(':');
  if (colon == std::string::npos) return std::make_pair(rest, std::string("8080"));
  return std::make_pair(rest.substr(0, colon), rest.substr(colon + 1));
}

Result<std::unique_ptr<HttpClient>> HttpClient::connect(const std::string& url,
                                                        double timeoutSeconds,
                                                        const TlsOptions& tls) {
  LIFL_TRY(hp, parseUrl(url));
  auto impl = std::make_unique<Impl>();
  impl->host = hp.first;
  impl->port = hp.second;
  if (url.rfind("https://", 0) == 0) {
    LIFL_TRY(ctx, clientTlsContext(tls));
    impl->tls.emplace(std::move(ctx));
    impl->tls->set_verify_callback(asio::ssl::host_name_verification(impl->host));
  }
  std::unique_ptr<HttpClient> client(new HttpClient(std::move(impl)));
  client->timeoutSeconds_ = timeoutSeconds;
  LIFL_TRYV(client->reconnect());
  return client;
}

// Beast's stream deadlines apply to asynchronous operations only, so every step runs as one
// on the client's own io_context: blocking for the caller, bounded by the timeout.
namespace {
template <class Start>
beast::error_code runOnce(asio::io_context& ioc, Start start) {
  beast::error_code result = asio::error::operation_aborted;
  start([&](beast::error_code ec, auto&&...) { result = ec; });
  ioc.restart();
  ioc.run();
  return result;
}
}  // namespace

void HttpClient::arm() {
  if (!impl_->connected()) return;
  if (timeoutSeconds_ > 0)
    impl_->lowest().expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(timeoutSeconds_)));
  else
    impl_->lowest().expires_never();
}

Result<void> HttpClient::reconnect() {
  beast::error_code ec;
  tcp::resolver resolver(impl_->ioc);
  auto results = resolver.resolve(impl_->host, impl_->port, ec);
  if (ec)
    return unavailable("connect_failed", "cannot resolve " + impl_->host + ": " + ec.message());
  impl_->stream.emplace(impl_->ioc);
  arm();
  ec = runOnce(impl_->ioc, [&](auto handler) { impl_->stream->async_connect(results, handler); });
  if (ec)
    return unavailable("connect_failed", "cannot connect to " + impl_->host + ":" + impl_->port +
                                             ": " + ec.message());
  impl_->stream->socket().set_option(tcp::no_delay(true));
  impl_->buffer.clear();
  if (impl_->tls) {  // the TCP connection becomes the TLS stream's lowest layer
    impl_->tlsStream.emplace(std::move(*impl_->stream), *impl_->tls);
    impl_->stream.reset();
    if (!SSL_set_tlsext_host_name(impl_->tlsStream->native_handle(), impl_->host.c_str())) {
      impl_->drop();
      return unavailable("connect_failed", "cannot set the TLS server name " + impl_->host);
    }
    arm();
    ec = runOnce(impl_->ioc, [&](auto handler) {
      impl_->tlsStream->async_handshake(asio::ssl::stream_base::client, handler);
    });
    if (ec) {
      impl_->drop();
      return unavailable("tls_failed",
                         "TLS with " + impl_->host + ":" + impl_->port + ": " + ec.message());
    }
  }
  return success();
}

Result<HttpResponse> HttpClient::request(std::string_view method, const std::string& target,
                                         const HeaderList& headers, const void* body,
                                         uint64_t bodySize) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (!impl_->connected()) LIFL_TRYV(reconnect());
    http::request<http::buffer_body> req;
    req.method_string(beast::string_view(method.data(), method.size()));
    req.target(target);
    req.version(11);
    req.set(http::field::host, impl_->host);
    req.set(http::field::user_agent, "lifl-cli");
    if (!bearer_.empty()) req.set(http::field::authorization, "Bearer " + bearer_);
    for (const auto& [k, v] : headers) req.set(k, v);
    req.body().data = const_cast<void*>(body);
    req.body().size = bodySize;
    req.body().more = false;
    req.content_length(bodySize);
    beast::error_code ec;
    arm();
    ec = runOnce(impl_->ioc, [&](auto handler) {
      impl_->with([&](auto& s) { http::async_write(s, req, handler); });
    });
    http::response_parser<http::string_body> parser;
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    if (!ec) {
      arm();
      ec = runOnce(impl_->ioc, [&](auto handler) {
        impl_->with([&](auto& s) { http::async_read(s, impl_->buffer, parser, handler); });
      });
    }
    if (ec) {
      // A server may close an idle keep-alive connection, or answer early (413) and close:
      // take what it said if anything, else retry once on a fresh connection.
      impl_->drop();
      if (parser.is_header_done())
        ec = {};
      else if (attempt == 0)
        continue;
      else
        return unavailable("request_failed",
                           std::string(method) + " " + target + ": " + ec.message());
    }
    auto res = parser.release();
    HttpResponse out;
    out.status = static_cast<int>(res.result_int());
    out.body = std::move(res.body());
    for (const auto& f : res) {
      std::string name(f.name_string());
      for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      out.headers[name] = std::string(f.value());
    }
    if (!res.keep_alive()) impl_->drop();
    return out;
  }
  return unavailable("request_failed", "unreachable");
}

std::vector<std::string> splitPath(std::string_view target) {
  if (auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
  std::vector<std::string> parts;
  size_t i = 0;
  while (i < target.size()) {
    size_t j = target.find('/', i);
    if (j == std::string_view::npos) j = target.size();
    if (j > i) parts.emplace_back(target.substr(i, j - i));
    i = j + 1;
  }
  return parts;
}

std::string queryParam(std::string_view target, std::string_view key) {
  auto q = target.find('?');
  if (q == std::string_view::npos) return "";
  std::string_view rest = target.substr(q + 1);
  while (!rest.empty()) {
    auto amp = rest.find('&');
    std::string_view pair = rest.substr(0, amp);
    if (auto eq = pair.find('='); eq != std::string_view::npos && pair.substr(0, eq) == key)
      return std::string(pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    rest = rest.substr(amp + 1);
  }
  return "";
}

Error errorOf(const HttpResponse& r) {
  auto doc = nlohmann::json::parse(r.body, nullptr, false);
  if (doc.is_object() && doc.contains("error"))
    return makeError(r.status, doc.value("error", "error"), doc.value("detail", ""));
  return makeError(r.status, "http_" + std::to_string(r.status), r.body.substr(0, 200));
}

}  // namespace lifl
