// Reading the YAML config files (the agent's and the controller's): every key must be known,
// so that a typo never falls back to a default silently, and errors name the key.
#pragma once

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <initializer_list>
#include <span>
#include <string>

#include "lifl/common/access_policy.h"
#include "lifl/common/error.h"

namespace lifl::config {

inline Error invalid(const std::string& detail) { return badRequest("invalid_config", detail); }

/// `out` from `node[key]`, when the key is there.
template <class T>
void read(const YAML::Node& node, const char* key, T& out) {
  if (node && node[key]) out = node[key].as<T>();
}

/// `section` is a mapping whose keys are all `known`. `name` is its key ("" for the file's
/// top level), as errors name keys: "unknown config key security.auht".
inline Result<void> checkKeys(const YAML::Node& section, const std::string& name,
                              std::span<const char* const> known) {
  if (!section.IsMap())
    return invalid(name.empty() ? "config must be a YAML mapping" : name + " must be a mapping");
  for (const auto& kv : section) {
    const auto key = kv.first.as<std::string>();
    if (std::none_of(known.begin(), known.end(), [&](const char* k) { return key == k; }))
      return invalid("unknown config key " + (name.empty() ? key : name + "." + key));
  }
  return success();
}
inline Result<void> checkKeys(const YAML::Node& section, const std::string& name,
                              std::initializer_list<const char*> known) {
  return checkKeys(section, name, std::span<const char* const>(known.begin(), known.size()));
}

/// The `security` section (docs/security.md), the same for the agent and the controller but
/// for the per-client rate limits, which only a gateway applies (`rateLimits`).
inline Result<void> readSecurity(const YAML::Node& sec, SecurityConfig& out, bool rateLimits) {
  // The rate limits' keys last, so that a gateway's list is the others' and two more.
  static constexpr const char* kKeys[] = {"auth",
                                          "signing_key_file",
                                          "admin_token_file",
                                          "cluster_token_file",
                                          "token_ttl_seconds",
                                          "client_rate",
                                          "client_burst"};
  LIFL_TRYV(checkKeys(sec, "security", std::span(kKeys, rateLimits ? 7 : 5)));
  read(sec, "auth", out.auth);
  read(sec, "signing_key_file", out.signingKeyFile);
  read(sec, "admin_token_file", out.adminTokenFile);
  read(sec, "cluster_token_file", out.clusterTokenFile);
  read(sec, "token_ttl_seconds", out.tokenTtlSeconds);
  read(sec, "client_rate", out.clientRate);
  read(sec, "client_burst", out.clientBurst);
  if (!(out.tokenTtlSeconds > 0)) return invalid("security.token_ttl_seconds must be positive");
  if (!(out.clientRate >= 0)) return invalid("security.client_rate must be >= 0");
  if (!(out.clientBurst >= 1)) return invalid("security.client_burst must be >= 1");
  return success();
}

}  // namespace lifl::config
