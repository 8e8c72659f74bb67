#include "lifl/common/access_policy.h"

#include <algorithm>
#include <cmath>

namespace lifl {
namespace {

constexpr size_t kMaxNameBytes = 256;
constexpr double kMaxTokenTtlSeconds = 366.0 * 86400;

}  // namespace

// ---------------------------------------------------------------- rate limits
std::optional<double> RateLimiter::take(const std::string& key,
                                        std::chrono::steady_clock::time_point now) {
  if (rate_ <= 0) return std::nullopt;
  std::lock_guard lock(mutex_);
  auto it = buckets_.find(key);
  if (it == buckets_.end()) {
    if (buckets_.size() >= kMaxKeys) {
      std::erase_if(buckets_, [&](const auto& kv) {
        const double idle = std::chrono::duration<double>(now - kv.second.at).count();
        return kv.second.tokens + idle * rate_ >= burst_;
      });
    }
    it = buckets_.emplace(key, Bucket{burst_, now}).first;
  }
  Bucket& b = it->second;
  const double idle = std::chrono::duration<double>(now - b.at).count();
  b.tokens = std::min(burst_, b.tokens + std::max(0.0, idle) * rate_);
  b.at = now;
  if (b.tokens >= 1) {
    b.tokens -= 1;
    return std::nullopt;
  }
  return (1 - b.tokens) / rate_;
}

// ---------------------------------------------------------------- policy
AccessPolicy::AccessPolicy(const SecurityConfig& config)
    : config_(config), rates_(config.clientRate, config.clientBurst) {}

Result<std::unique_ptr<AccessPolicy>> AccessPolicy::create(const SecurityConfig& config,
                                                           const std::string& dataDir,
                                                           PolicyRole role) {
  std::unique_ptr<AccessPolicy> p(new AccessPolicy(config));
  if (!config.auth) return p;
  const bool member = role == PolicyRole::Member;
  if (!member || !config.adminTokenFile.empty()) {
    LIFL_TRY(admin, auth::loadSecret(config.adminTokenPath(dataDir), !member));
    p->admin_ = auth::SharedSecret::of(admin);
  }
  if (role != PolicyRole::Standalone) {
    LIFL_TRY(secret, auth::loadSecret(config.clusterTokenPath(dataDir), !member));
    p->cluster_ = auth::SharedSecret::of(secret);
    p->clusterToken_ = secret;
  }
  if (!member) {
    LIFL_TRY(signer, auth::SigningKey::loadOrCreate(config.signingKeyPath(dataDir)));
    LIFL_TRYV(p->setPublicKey(signer.publicKey()));
    p->signer_ = std::move(signer);
  }
  return p;
}

std::string AccessPolicy::publicKey() const {
  std::shared_lock lock(keyMutex_);
  return publicKey_;
}

Result<void> AccessPolicy::setPublicKey(std::string_view publicKey) {
  if (publicKey == this->publicKey()) return success();  // a re-registration: the same key
  LIFL_TRY(verifier, auth::TokenVerifier::fromPublicKey(publicKey));
  std::unique_lock lock(keyMutex_);
  verifier_ = std::move(verifier);
  publicKey_ = std::string(publicKey);
  return success();
}

Result<void> AccessPolicy::requireAdmin(std::string_view authorization) const {
  if (!config_.auth) return success();
  const auto presented = auth::bearerToken(authorization);
  if (presented.empty())
    return unauthorized("this endpoint needs the admin credential (Authorization: Bearer ...)");
  if (admin_ && admin_->matches(presented)) return success();
  std::shared_lock lock(keyMutex_);
  if (verifier_ && verifier_->verify(presented, auth::unixNow()))
    return forbidden("a client token cannot use this endpoint; it needs the admin credential");
  return unauthorized("the credential is not the admin credential");
}

Result<auth::ClientClaims> AccessPolicy::requireClient(
    std::string_view authorization, const std::string& job,
    std::optional<std::string_view> ceSource) const {
  if (!config_.auth) return auth::ClientClaims{job, std::string(ceSource.value_or("")), 0};
  const auto presented = auth::bearerToken(authorization);
  if (presented.empty())
    return unauthorized("this endpoint needs a client token (Authorization: Bearer ...)");
  if (admin_ && admin_->matches(presented))
    return forbidden("updates need the client's own token, not the admin credential");
  std::shared_lock lock(keyMutex_);
  if (!verifier_) return unauthorized("this node cannot check client tokens yet");
  LIFL_TRY(claims, verifier_->verify(presented, auth::unixNow()));
  if (claims.job != job) return forbidden("the token is for another job");
  if (ceSource && claims.client != *ceSource)
    return forbidden("the token is for another client than the update's ce-source");
  return claims;
}

Result<void> AccessPolicy::requireReader(std::string_view authorization,
                                         const std::string& job) const {
  if (!config_.auth) return success();
  const auto presented = auth::bearerToken(authorization);
  if (admin_ && admin_->matches(presented)) return success();
  // Nodes read a job's model from each other: the controller copies a finished round's from
  // the root, and members fetch it from the controller when the next round starts.
  if (cluster_ && cluster_->matches(presented)) return success();
  LIFL_TRYV(requireClient(authorization, job, std::nullopt));
  return success();
}

Result<void> AccessPolicy::requireCluster(std::string_view authorization) const {
  if (!config_.auth) return success();
  const auto presented = auth::bearerToken(authorization);
  if (presented.empty()) return unauthorized("node-to-node calls need the cluster credential");
  if (cluster_ && cluster_->matches(presented)) return success();
  return forbidden("the credential is not the cluster credential");
}

Result<nlohmann::json> AccessPolicy::issue(const std::string& job, const std::string& client,
                                           double ttlSeconds) const {
  if (!config_.auth)
    return notFound("auth_disabled", "tokens are issued only when security.auth is on");
  if (!signer_) return notFound("not_issuer", "tokens are issued by the controller");
  if (job.empty() || client.empty() || job.size() > kMaxNameBytes || client.size() > kMaxNameBytes)
    return unprocessable("invalid_token_request", "job and client must be 1-256 bytes");
  const double ttl = ttlSeconds > 0 ? ttlSeconds : config_.tokenTtlSeconds;
  if (!std::isfinite(ttl) || ttl > kMaxTokenTtlSeconds)
    return unprocessable("invalid_token_request", "ttl_seconds must be at most a year");
  const int64_t expires = auth::unixNow() + static_cast<int64_t>(std::ceil(ttl));
  LIFL_TRY(token, signer_->sign({job, client, expires}));
  return nlohmann::json{
      {"token", token}, {"job", job}, {"client", client}, {"expires_at", expires}};
}

Result<nlohmann::json> AccessPolicy::issue(std::string_view requestBody) const {
  const auto d = nlohmann::json::parse(requestBody, nullptr, false);
  if (!d.is_object() || !d.contains("job") || !d["job"].is_string() || !d.contains("client") ||
      !d["client"].is_string() || (d.contains("ttl_seconds") && !d["ttl_seconds"].is_number()))
    return badRequest("invalid_token_request",
                      R"(the body must be {"job": str, "client": str, "ttl_seconds"?: n})");
  const double ttl = d.value("ttl_seconds", 0.0);
  if (d.contains("ttl_seconds") && !(ttl > 0))
    return unprocessable("invalid_token_request", "ttl_seconds must be positive");
  return issue(d["job"].get<std::string>(), d["client"].get<std::string>(), ttl);
}

std::optional<double> AccessPolicy::takeRate(const std::string& job, std::string_view client) {
  std::string key = job;
  key += '\n';
  key += client;
  return rates_.take(key);
}

}  // namespace lifl
