#include "lifl/common/strategy.h"

#include <cmath>
#include <set>
#include <utility>
#include <vector>

namespace lifl {
namespace {

Error strategyError(std::string detail) {
  return unprocessable("invalid_job_spec", "strategy: " + std::move(detail));
}

struct Param {
  const char* key;
  double Strategy::*field;
  double lo, hi;  ///< inclusive bounds
};

const std::vector<std::pair<const char*, StrategyKind>>& names() {
  static const std::vector<std::pair<const char*, StrategyKind>> n = {
      {"fedavg", StrategyKind::FedAvg},   {"fedprox", StrategyKind::FedProx},
      {"fedavgm", StrategyKind::FedAvgM}, {"fedadam", StrategyKind::FedAdam},
      {"fedyogi", StrategyKind::FedYogi}, {"fedadagrad", StrategyKind::FedAdagrad},
      {"median", StrategyKind::Median},   {"trimmed_mean", StrategyKind::TrimmedMean},
      {"krum", StrategyKind::Krum},       {"multikrum", StrategyKind::MultiKrum},
      {"fedbuff", StrategyKind::FedBuff}};
  return n;
}

std::vector<Param> paramsOf(StrategyKind kind) {
  const Param eta{"eta", &Strategy::eta, 1e-12, 1e6};
  const Param etaL{"eta_l", &Strategy::etaL, 0, 1e6};
  const Param beta1{"beta_1", &Strategy::beta1, 0, 0.999999};
  const Param beta2{"beta_2", &Strategy::beta2, 0, 0.999999};
  const Param tau{"tau", &Strategy::tau, 1e-30, 1e6};
  const Param serverLr{"server_learning_rate", &Strategy::serverLearningRate, 1e-12, 1e6};
  switch (kind) {
    case StrategyKind::FedAvg:
      return {};
    case StrategyKind::FedProx:
      return {{"proximal_mu", &Strategy::proximalMu, 0, 1e6}};
    case StrategyKind::FedAvgM:
      return {serverLr, {"server_momentum", &Strategy::serverMomentum, 0, 0.999999}};
    case StrategyKind::FedAdam:
    case StrategyKind::FedYogi:
      return {eta, etaL, beta1, beta2, tau};
    case StrategyKind::FedAdagrad:
      return {eta, etaL, tau};
    case StrategyKind::Median:
      return {};
    case StrategyKind::TrimmedMean:
      return {{"beta", &Strategy::beta, 0, 0.499999}};
    case StrategyKind::Krum:
      return {{"num_malicious_clients", &Strategy::numMalicious, 0, 1e6}};
    case StrategyKind::MultiKrum:
      return {{"num_malicious_clients", &Strategy::numMalicious, 0, 1e6},
              {"num_clients_to_keep", &Strategy::numToKeep, 0, 1e6}};
    case StrategyKind::FedBuff:
      return {serverLr, {"max_staleness", &Strategy::maxStaleness, 0, 1e6}};
  }
  return {};
}

}  // namespace

std::string Strategy::name() const {
  for (const auto& [n, k] : names())
    if (k == kind) return n;
  return "fedavg";
}

uint32_t Strategy::stateVectors() const {
  switch (kind) {
    case StrategyKind::FedAvg:
    case StrategyKind::FedProx:
    case StrategyKind::Median:
    case StrategyKind::TrimmedMean:
    case StrategyKind::Krum:
    case StrategyKind::MultiKrum:
    case StrategyKind::FedBuff:
      return 0;
    case StrategyKind::FedAvgM:
      return 1;  // the momentum vector
    case StrategyKind::FedAdam:
    case StrategyKind::FedYogi:
    case StrategyKind::FedAdagrad:
      return 2;  // first and second moments
  }
  return 0;
}

double Strategy::stalenessFactor(uint32_t staleness) const {
  return asynchronous() ? 1.0 / std::sqrt(1.0 + staleness) : 1.0;
}

nlohmann::json Strategy::toJson() const {
  nlohmann::json out = {{"name", name()}};
  Strategy self = *this;
  for (const auto& p : paramsOf(kind)) out[p.key] = self.*(p.field);
  if (robust()) out["per_leaf"] = perLeaf;
  return out;
}

Result<Strategy> strategyFromJson(const nlohmann::json& doc) {
  if (!doc.is_object() || !doc.contains("name") || !doc["name"].is_string())
    return strategyError("must be an object with a name");
  Strategy s;
  const std::string name = doc["name"];
  bool known = false;
  std::string all;
  for (const auto& [n, k] : names()) {
    if (name == n) {
      s.kind = k;
      known = true;
    }
    all += all.empty() ? n : std::string(", ") + n;
  }
  if (!known) return strategyError(name + " is not supported (supported: " + all + ")");
  if (s.kind == StrategyKind::FedAdagrad) s.beta1 = 0;  // Flower's FedAdagrad: no momentum
  const auto params = paramsOf(s.kind);
  std::set<std::string> allowed = {"name"};
  for (const auto& p : params) allowed.insert(p.key);
  if (s.robust()) {
    allowed.insert("per_leaf");
    if (auto it = doc.find("per_leaf"); it != doc.end() && !it->is_null()) {
      if (!it->is_boolean()) return strategyError("per_leaf must be true or false");
      s.perLeaf = it->get<bool>();
    }
  }
  for (const auto& [key, value] : doc.items())
    if (!allowed.count(key)) return strategyError(name + " has no parameter " + key);
  for (const auto& p : params) {
    auto it = doc.find(p.key);
    if (it == doc.end() || it->is_null()) continue;
    if (!it->is_number()) return strategyError(std::string(p.key) + " must be a number");
    const double v = it->get<double>();
    if (!std::isfinite(v) || v < p.lo || v > p.hi)
      return strategyError(std::string(p.key) + " must be between " + std::to_string(p.lo) +
                           " and " + std::to_string(p.hi));
    s.*(p.field) = v;
  }
  for (double count : {s.numMalicious, s.numToKeep})
    if (count != std::floor(count)) return strategyError("client counts must be integers");
  if (s.maxStaleness != std::floor(s.maxStaleness))
    return strategyError("max_staleness must be an integer (global model versions)");
  if (s.kind == StrategyKind::FedProx && !doc.contains("proximal_mu"))
    return strategyError("fedprox needs proximal_mu (the clients' proximal term)");
  return s;
}

}  // namespace lifl
