// The server side of a TLS session's handshake and close, shared by the servers that speak HTTPS
// (the agent's gateway, the controller's API). Included only by the translation units that
// instantiate Beast's server side.
#pragma once

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <chrono>

#include "lifl/common/log.h"

namespace lifl {

/// Runs the server handshake on `stream` (a beast::ssl_stream), bounded by `timeout`.
/// @return false when it failed (not TLS, or, under mTLS, no certificate of the client CA):
///         there is nothing to answer, and the connection just closes
template <class Stream>
boost::asio::awaitable<bool> acceptTls(Stream& stream,
                                       std::chrono::steady_clock::duration timeout) {
  boost::beast::get_lowest_layer(stream).expires_after(timeout);
  boost::beast::error_code ec;
  co_await stream.async_handshake(boost::asio::ssl::stream_base::server,
                                  boost::asio::redirect_error(boost::asio::use_awaitable, ec));
  if (ec) LIFL_DEBUG("TLS handshake refused: " << ec.message());
  co_return !ec;
}

/// Ends the TLS session (close_notify), giving the peer a second to answer.
template <class Stream>
boost::asio::awaitable<void> closeTls(Stream& stream) {
  boost::beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(1));
  boost::beast::error_code ec;
  co_await stream.async_shutdown(boost::asio::redirect_error(boost::asio::use_awaitable, ec));
}

}  // namespace lifl
