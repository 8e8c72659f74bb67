#include "lifl/common/tls_context.h"

#include <boost/asio/ssl/context.hpp>

namespace lifl {

namespace ssl = boost::asio::ssl;

namespace {
Error fileError(std::string_view prefix, const char* key, const std::string& detail) {
  return badRequest("invalid_config", std::string(prefix) + key + ": " + detail);
}
}  // namespace

Result<void> checkServerTlsFiles(const ServerTlsFiles& f, std::string_view prefix) {
  const std::string p(prefix);
  if (f.certFile.empty() != f.keyFile.empty())
    return badRequest("invalid_config", p + "cert_file and " + p + "key_file go together");
  if (!f.clientCaFile.empty() && f.certFile.empty())
    return badRequest("invalid_config",
                      p + "client_ca_file needs " + p + "cert_file (mTLS is TLS)");
  return success();
}

Result<ssl::context> clientTlsContext(const TlsOptions& tls) {
  ssl::context ctx(ssl::context::tls_client);
  boost::system::error_code ec;
  if (tls.caFile.empty())
    ctx.set_default_verify_paths(ec);
  else
    ctx.load_verify_file(tls.caFile, ec);
  if (ec) return badRequest("bad_arguments", "the CA file " + tls.caFile + ": " + ec.message());
  if (!tls.certFile.empty()) {
    ctx.use_certificate_chain_file(tls.certFile, ec);
    if (!ec) ctx.use_private_key_file(tls.keyFile, ssl::context::pem, ec);
    if (ec) return badRequest("bad_arguments", "the client certificate: " + ec.message());
  }
  ctx.set_verify_mode(ssl::verify_peer);
  return ctx;
}

Result<ssl::context> serverTlsContext(const ServerTlsFiles& f, std::string_view prefix) {
  LIFL_TRYV(checkServerTlsFiles(f, prefix));
  ssl::context ctx(ssl::context::tls_server);
  boost::system::error_code ec;
  ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                      ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1,
                  ec);
  ctx.use_certificate_chain_file(f.certFile, ec);
  if (ec) return fileError(prefix, "cert_file", ec.message());
  ctx.use_private_key_file(f.keyFile, ssl::context::pem, ec);
  if (ec) return fileError(prefix, "key_file", ec.message());
  if (!f.clientCaFile.empty()) {
    ctx.load_verify_file(f.clientCaFile, ec);
    if (ec) return fileError(prefix, "client_ca_file", ec.message());
    ctx.set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  }
  return ctx;
}

}  // namespace lifl
