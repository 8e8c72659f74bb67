#include "lifl/common/credentials.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "lifl/common/base64.h"
#include "lifl/common/text.h"
#include "lifl/common/unique_fd.h"

namespace lifl::auth {
namespace {

constexpr std::string_view kPrefix = "lifl1.";
constexpr size_t kKeyBytes = 32, kSignatureBytes = 64;

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

Error credentialError(const std::string& detail) { return internal("credential_error", detail); }

Result<std::string> randomBytes(size_t n) {
  std::string out(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1)
    return credentialError("the system gave no random bytes");
  return out;
}

std::string hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

std::string sha256(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<char*>(md), len);
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

/// The secret in `path` (trailing blanks dropped), which must give no access to group or
/// others; created (0600, in a 0700 folder) with make() when missing.
Result<std::string> readOrCreateSecret(const std::string& path,
                                       const std::function<Result<std::string>()>& make) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) return systemError("stat " + path, errno);
    std::error_code ec;
    const auto dir = std::filesystem::path(path).parent_path();
    if (!dir.empty() && !std::filesystem::exists(dir)) {
      std::filesystem::create_directories(dir, ec);
      if (ec) return credentialError("cannot create " + dir.string() + ": " + ec.message());
      ::chmod(dir.c_str(), 0700);
    }
    LIFL_TRY(secret, make());
    // O_EXCL: two processes starting at once agree on the first one's secret.
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (fd.get() >= 0) {
      if (::write(fd.get(), secret.data(), secret.size()) != static_cast<ssize_t>(secret.size()))
        return systemError("write " + path, errno);
      return trimmed(secret);
    }
    if (errno != EEXIST) return systemError("create " + path, errno);
    if (::stat(path.c_str(), &st) != 0) return systemError("stat " + path, errno);
  }
  if (st.st_mode & 077)
    return badRequest("invalid_config", path + " is readable by other users: chmod 600 it");
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  std::string secret = trimmed(text.str());
  if (secret.empty()) return badRequest("invalid_config", path + " is empty");
  return secret;
}

}  // namespace

int64_t unixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string_view bearerToken(std::string_view authorization) {
  constexpr std::string_view kScheme = "Bearer ";
  if (authorization.size() <= kScheme.size() ||
      !iequals(authorization.substr(0, kScheme.size()), kScheme))
    return {};
  auto token = authorization.substr(kScheme.size());
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  return token;
}

// ---------------------------------------------------------------- signing
struct SigningKey::Impl {
  Pkey key;
};

SigningKey::SigningKey(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SigningKey::SigningKey(SigningKey&&) noexcept = default;
SigningKey& SigningKey::operator=(SigningKey&&) noexcept = default;
SigningKey::~SigningKey() = default;

Result<SigningKey> SigningKey::loadOrCreate(const std::string& path) {
  LIFL_TRY(text, readOrCreateSecret(path, []() -> Result<std::string> {
             LIFL_TRY(seed, randomBytes(kKeyBytes));
             return base64Encode(seed) + "\n";
           }));
  const auto seed = base64Decode(text);
  if (!seed || seed->size() != kKeyBytes)
    return badRequest("invalid_config", path + " does not hold a base64 Ed25519 key");
  Pkey key(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr,
                                        reinterpret_cast<const unsigned char*>(seed->data()),
                                        seed->size()));
  if (!key) return credentialError("OpenSSL refused the Ed25519 key of " + path);
  auto impl = std::make_unique<Impl>();
  impl->key = std::move(key);
  return SigningKey(std::move(impl));
}

Result<std::string> SigningKey::sign(const ClientClaims& claims) const {
  const nlohmann::json body = {
      {"job", claims.job}, {"client", claims.client}, {"exp", claims.expires}};
  const std::string signedPart = std::string(kPrefix) + base64UrlEncode(body.dump());
  MdCtx ctx(EVP_MD_CTX_new());
  unsigned char sig[kSignatureBytes];
  size_t len = sizeof(sig);
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, impl_->key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), sig, &len,
                     reinterpret_cast<const unsigned char*>(signedPart.data()),
                     signedPart.size()) != 1)
    return credentialError("OpenSSL could not sign the token");
  return signedPart + "." +
         base64UrlEncode(std::string_view(reinterpret_cast<const char*>(sig), len));
}

std::string SigningKey::publicKey() const {
  unsigned char pub[kKeyBytes];
  size_t len = sizeof(pub);
  EVP_PKEY_get_raw_public_key(impl_->key.get(), pub, &len);
  return base64UrlEncode(std::string_view(reinterpret_cast<const char*>(pub), len));
}

// ---------------------------------------------------------------- verifying
struct TokenVerifier::Impl {
  Pkey key;
};

TokenVerifier::TokenVerifier(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TokenVerifier::TokenVerifier(TokenVerifier&&) noexcept = default;
TokenVerifier& TokenVerifier::operator=(TokenVerifier&&) noexcept = default;
TokenVerifier::~TokenVerifier() = default;

Result<TokenVerifier> TokenVerifier::fromPublicKey(std::string_view publicKey) {
  const auto raw = base64UrlDecode(publicKey);
  if (!raw || raw->size() != kKeyBytes)
    return badRequest("invalid_public_key", "the public key is not 32 bytes of base64url");
  Pkey key(EVP_PKEY_new_raw_public_key(
      EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(raw->data()), raw->size()));
  if (!key) return badRequest("invalid_public_key", "OpenSSL refused the Ed25519 public key");
  auto impl = std::make_unique<Impl>();
  impl->key = std::move(key);
  return TokenVerifier(std::move(impl));
}

Result<ClientClaims> TokenVerifier::verify(std::string_view token, int64_t now) const {
  if (!token.starts_with(kPrefix)) return unauthorized("the credential is not a LIFL client token");
  const size_t dot = token.find('.', kPrefix.size());
  if (dot == std::string_view::npos) return unauthorized("the token has no signature");
  const std::string_view signedPart = token.substr(0, dot);
  const auto sig = base64UrlDecode(token.substr(dot + 1));
  if (!sig || sig->size() != kSignatureBytes)
    return unauthorized("the token's signature is malformed");
  MdCtx ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, impl_->key.get()) != 1)
    return credentialError("OpenSSL could not start a verification");
  if (EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig->data()), sig->size(),
                       reinterpret_cast<const unsigned char*>(signedPart.data()),
                       signedPart.size()) != 1)
    return unauthorized("the token is not signed by this platform's controller");
  const auto body = base64UrlDecode(signedPart.substr(kPrefix.size()));
  auto doc = body ? nlohmann::json::parse(*body, nullptr, false) : nlohmann::json();
  if (!doc.is_object() || !doc.contains("job") || !doc["job"].is_string() ||
      !doc.contains("client") || !doc["client"].is_string() || !doc.contains("exp") ||
      !doc["exp"].is_number_integer())
    return unauthorized("the token's claims are malformed");
  ClientClaims claims{doc["job"].get<std::string>(), doc["client"].get<std::string>(),
                      doc["exp"].get<int64_t>()};
  if (claims.expires <= now) return unauthorized("the token has expired");
  return claims;
}

// ---------------------------------------------------------------- shared secrets
Result<std::string> loadSecret(const std::string& path, bool create) {
  if (!create && !std::filesystem::exists(path))
    return badRequest("invalid_config", path + " does not exist (it holds a shared secret)");
  return readOrCreateSecret(path, []() -> Result<std::string> {
    LIFL_TRY(bytes, randomBytes(32));
    return hex(bytes) + "\n";
  });
}

SharedSecret SharedSecret::of(std::string_view secret) {
  SharedSecret c;
  c.digest_ = sha256(secret);
  return c;
}

Result<SharedSecret> SharedSecret::loadOrCreate(const std::string& path) {
  LIFL_TRY(secret, loadSecret(path, true));
  return of(secret);
}

bool SharedSecret::matches(std::string_view presented) const {
  if (presented.empty() || digest_.empty()) return false;
  const std::string d = sha256(presented);
  return CRYPTO_memcmp(d.data(), digest_.data(), d.size()) == 0;
}

}  // namespace lifl::auth
