// The API's credentials (docs/security.md): client tokens, signed by the controller's Ed25519
// key and checked at the gateways with its public key only, and the admin credential of the
// jobs API. OpenSSL does the cryptography.
//
// A client token is `lifl1.<claims>.<signature>`, both parts base64url: the claims are JSON
// {"job", "client", "exp"} (exp in Unix seconds), the signature is Ed25519 over
// "lifl1." + the claims part.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "lifl/common/error.h"

namespace lifl::auth {

struct ClientClaims {
  std::string job;      ///< the only job the token may push to
  std::string client;   ///< must equal the update's ce-source
  int64_t expires = 0;  ///< Unix seconds
};

/// Unix seconds now (the clock tokens expire by).
int64_t unixNow();

/// The controller's signing key.
class SigningKey {
 public:
  /// Reads the key from `path` (base64 of the 32-byte Ed25519 seed), or creates the file with
  /// a new random key, readable by its owner only, when it does not exist.
  static Result<SigningKey> loadOrCreate(const std::string& path);
  SigningKey(SigningKey&&) noexcept;
  SigningKey& operator=(SigningKey&&) noexcept;
  ~SigningKey();

  Result<std::string> sign(const ClientClaims& claims) const;
  /// The public key, base64url of its 32 bytes: what gateways verify with.
  std::string publicKey() const;

 private:
  struct Impl;
  explicit SigningKey(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Checks client tokens with the controller's public key.
class TokenVerifier {
 public:
  /// @param publicKey base64url of the 32-byte Ed25519 public key
  static Result<TokenVerifier> fromPublicKey(std::string_view publicKey);
  TokenVerifier(TokenVerifier&&) noexcept;
  TokenVerifier& operator=(TokenVerifier&&) noexcept;
  ~TokenVerifier();

  /// The token's claims; 401 `unauthorized` if it is malformed, not signed by the key, or
  /// expired at `now`.
  Result<ClientClaims> verify(std::string_view token, int64_t now) const;

 private:
  struct Impl;
  explicit TokenVerifier(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// The secret kept in `path`, a file no other user may read (400 invalid_config otherwise);
/// created with 32 random bytes in hex, in an owner-only folder, when missing and `create`.
Result<std::string> loadSecret(const std::string& path, bool create);

/// A shared secret presented as a bearer credential: the admin credential, or the cluster
/// credential of the nodes. Only its SHA-256 digest is held, and a presented secret is
/// compared by digest in constant time.
class SharedSecret {
 public:
  static SharedSecret of(std::string_view secret);
  /// loadSecret(path, true), as a SharedSecret.
  static Result<SharedSecret> loadOrCreate(const std::string& path);
  bool matches(std::string_view presented) const;

 private:
  std::string digest_;
};

/// The token of an `Authorization: Bearer <token>` header value ("" when it is not one).
std::string_view bearerToken(std::string_view authorization);

}  // namespace lifl::auth
