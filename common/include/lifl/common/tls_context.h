// The TLS context of a server that speaks HTTPS only (the agent's gateway, the controller's
// API): TLS 1.2 and later, its certificate chain and key, and for mTLS the CA whose
// certificates clients must present. One place, so both servers refuse the same handshakes;
// and the context of a client of them (the blocking HttpClient, the gateway's relay).
#pragma once

#include <string>
#include <string_view>

#include "lifl/common/error.h"

namespace boost::asio::ssl {
class context;  // <boost/asio/ssl/context.hpp>, included only where a server is built
}

namespace lifl {

struct ServerTlsFiles {
  std::string certFile;      ///< PEM certificate chain; empty: plain HTTP
  std::string keyFile;       ///< its PEM private key
  std::string clientCaFile;  ///< mTLS: clients must present a certificate of this CA
  bool enabled() const { return !certFile.empty(); }
};

/// For https:// URLs: the CA the server's certificate must chain to (empty: the system's
/// CAs), and for mTLS the client's certificate chain and key (PEM).
struct TlsOptions {
  std::string caFile, certFile, keyFile;
};

/// A client context that verifies the server's certificate against `tls.caFile` and, with a
/// certificate file, presents it (bad_arguments naming the file that fails). The host name is
/// checked per connection: set_verify_callback(host_name_verification(host)).
Result<boost::asio::ssl::context> clientTlsContext(const TlsOptions& tls);

/// Checks that the files go together; errors name the config keys as `<keyPrefix>cert_file`.
Result<void> checkServerTlsFiles(const ServerTlsFiles& files, std::string_view keyPrefix);

/// Loads the files into a server context (invalid_config naming the key that fails). The
/// caller includes <boost/asio/ssl/context.hpp>.
Result<boost::asio::ssl::context> serverTlsContext(const ServerTlsFiles& files,
                                                   std::string_view keyPrefix);

}  // namespace lifl
