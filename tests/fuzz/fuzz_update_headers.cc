// libFuzzer target: an HTTP request head as the gateway receives it, parsed by Beast's request
// parser, then handled as the gateway handles an update's headers before its body: the
// CloudEvents attributes (parseUpdateHeaders) and the credential (bearerToken, then the token
// checked against a fixed public key). Every input must end in a value or an error, without a
// crash, a leak or undefined behaviour.
#include <boost/beast/http.hpp>
#include <cstdint>
#include <string_view>

#include "lifl/common/credentials.h"
#include "lifl/dataplane/update_headers.h"

namespace http = boost::beast::http;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // RFC 8032's first test key: any valid key will do, forged tokens must all fail.
  static const auto verifier =
      lifl::auth::TokenVerifier::fromPublicKey("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
  http::request_parser<http::empty_body> parser;
  parser.header_limit(64 * 1024);
  parser.eager(false);
  boost::beast::error_code ec;
  parser.put(boost::asio::buffer(data, size), ec);
  if (!parser.is_header_done()) return 0;
  const auto& req = parser.get();
  auto header = [&](std::string_view name) -> std::string_view {
    auto it = req.find(boost::beast::string_view(name.data(), name.size()));
    if (it == req.end()) return {};
    return {it->value().data(), it->value().size()};
  };
  auto meta = lifl::dataplane::parseUpdateHeaders(header);
  if (meta &&
      (meta.value().id.empty() || meta.value().source.empty() || meta.value().numExamples == 0))
    __builtin_trap();  // accepted attributes are never empty
  const auto token = lifl::auth::bearerToken(header("authorization"));
  if (verifier && !token.empty()) {
    auto claims = verifier.value().verify(token, 0);
    if (claims) __builtin_trap();  // nothing here is signed by that key's owner
  }
  return 0;
}
