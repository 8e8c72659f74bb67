// Who may call what on the gateway (docs/security.md), when `security.auth` is on:
//   - pushing an update needs a client token of that job whose client is the update's
//     ce-source, checked from the headers before the body is read;
//   - reading a job's status or model needs that job's client token or the admin credential;
//   - everything else under /v1/ (the jobs API, tokens, functions, completions) needs the
//     admin credential.
// 401 `unauthorized` for a missing, malformed, forged or expired credential; 403 `forbidden`
// for a valid one that does not reach this resource. With auth off every call is allowed.
// Also the per-client rate limit of updates (429 `rate_limited`), which holds with auth off.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>

#include "lifl/common/credentials.h"
#include "lifl/common/error.h"

namespace lifl {

struct SecurityConfig {
  bool auth = false;
  std::string signingKeyFile;      ///< default <data_dir>/auth/signing.key
  std::string adminTokenFile;      ///< default <data_dir>/auth/admin.token
  std::string clusterTokenFile;    ///< cluster mode: default <data_dir>/auth/cluster.token
  double tokenTtlSeconds = 86400;  ///< default lifetime of a client token (POST /v1/tokens)
  double clientRate = 0;           ///< updates a second per (job, client); 0: no limit
  double clientBurst = 10;         ///< updates a client may send at once before the rate applies

  /// The files in effect: the configured ones, else their defaults under `dataDir`.
  std::string adminTokenPath(const std::string& dataDir) const {
    return adminTokenFile.empty() ? dataDir + "/auth/admin.token" : adminTokenFile;
  }
  std::string clusterTokenPath(const std::string& dataDir) const {
    return clusterTokenFile.empty() ? dataDir + "/auth/cluster.token" : clusterTokenFile;
  }
  std::string signingKeyPath(const std::string& dataDir) const {
    return signingKeyFile.empty() ? dataDir + "/auth/signing.key" : signingKeyFile;
  }
};

/// A token bucket per key: `rate` a second, up to `burst`. Bounded: beyond kMaxKeys buckets,
/// full ones are forgotten (a full bucket is what a new key gets anyway).
class RateLimiter {
 public:
  RateLimiter(double rate, double burst) : rate_(rate), burst_(burst) {}
  /// Takes one from the key's bucket; nullopt when allowed, else the seconds until one is
  /// there.
  std::optional<double> take(const std::string& key, std::chrono::steady_clock::time_point now =
                                                         std::chrono::steady_clock::now());

 private:
  static constexpr size_t kMaxKeys = 1 << 16;
  struct Bucket {
    double tokens;
    std::chrono::steady_clock::time_point at;
  };
  double rate_, burst_;
  std::mutex mutex_;
  std::map<std::string, Bucket, std::less<>> buckets_;
};

/// Which process holds the policy.
enum class PolicyRole {
  Standalone,  ///< lifl up: the admin credential and the signing key (both created if missing)
  Controller,  ///< the same, and the cluster credential (created if missing)
  Member,      ///< lifl agent: the cluster credential (which must exist), the admin
               ///< credential if its file is configured; client tokens are checked with the
               ///< controller's public key, given at registration (setPublicKey)
};

class AccessPolicy {
 public:
  /// Off: allows everything.
  static Result<std::unique_ptr<AccessPolicy>> create(const SecurityConfig& config,
                                                      const std::string& dataDir, PolicyRole role);

  bool enabled() const { return config_.auth; }
  Result<void> requireAdmin(std::string_view authorization) const;
  /// A client token of `job`; with ceSource given, its client must be that source.
  Result<auth::ClientClaims> requireClient(std::string_view authorization, const std::string& job,
                                           std::optional<std::string_view> ceSource) const;
  /// The admin credential, a client token of `job`, or the cluster credential (nodes copy a
  /// job's model from each other).
  Result<void> requireReader(std::string_view authorization, const std::string& job) const;
  /// The cluster credential (the calls between the controller and its agents).
  Result<void> requireCluster(std::string_view authorization) const;
  /// The cluster credential itself, for this node's own calls ("" while auth is off).
  const std::string& clusterToken() const { return clusterToken_; }
  /// A signed client token (POST /v1/tokens). @param ttlSeconds 0: the configured default
  Result<nlohmann::json> issue(const std::string& job, const std::string& client,
                               double ttlSeconds) const;
  /// The same, for the body of POST /v1/tokens: {"job", "client", "ttl_seconds"?}
  /// (400 invalid_token_request when it is not that).
  Result<nlohmann::json> issue(std::string_view requestBody) const;
  /// The public key tokens are verified with ("" while auth is off).
  std::string publicKey() const;
  /// Replaces the key tokens are verified with (a no-op for the key already in use).
  Result<void> setPublicKey(std::string_view publicKey);
  /// Takes one update of the (job, client) pair's rate: nullopt when allowed, else the
  /// seconds until it may send again (the gateway answers 429 with Retry-After).
  std::optional<double> takeRate(const std::string& job, std::string_view client);
  double clientRate() const { return config_.clientRate; }

 private:
  explicit AccessPolicy(const SecurityConfig& config);
  SecurityConfig config_;
  std::optional<auth::SharedSecret> admin_, cluster_;
  std::string clusterToken_;
  std::optional<auth::SigningKey> signer_;
  mutable std::shared_mutex keyMutex_;  ///< a member's key arrives while requests are served
  std::optional<auth::TokenVerifier> verifier_;
  std::string publicKey_;
  RateLimiter rates_;
};

}  // namespace lifl
