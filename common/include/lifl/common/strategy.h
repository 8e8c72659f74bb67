// A job's aggregation strategy (job spec `strategy`), docs/strategies.md. The synchronous ones
// all sum the round's updates weighted by their examples; the server optimisers then take a
// step from the global model along the weighted mean (Reddi et al., "Adaptive Federated
// Optimization", 2021), with parameter names and defaults as in Flower's strategies.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "lifl/common/error.h"

namespace lifl {

enum class StrategyKind {
  FedAvg,
  FedProx,
  FedAvgM,
  FedAdam,
  FedYogi,
  FedAdagrad,
  Median,       ///< coordinate-wise median of the round's updates (unweighted)
  TrimmedMean,  ///< coordinate-wise mean after cutting beta of the updates at each end
  Krum,         ///< the update closest to its n - f - 2 nearest (Blanchard et al., 2017)
  MultiKrum,    ///< the weighted mean of the updates with the best Krum scores
  FedBuff,      ///< asynchronous: a step after every K buffered deltas, staleness-weighted
};

struct Strategy {
  StrategyKind kind = StrategyKind::FedAvg;
  double eta = 0.1;    ///< server learning rate of the adaptive optimisers
  double etaL = 0.1;   ///< the clients' learning rate (handed to them in the job status)
  double beta1 = 0.9;  ///< first-moment decay (0 for fedadagrad, as in Flower)
  double beta2 = 0.99;
  double tau = 1e-9;
  double serverLearningRate = 1.0;  ///< fedavgm, fedbuff
  double serverMomentum = 0.0;      ///< fedavgm
  double proximalMu = 0.0;          ///< fedprox: handed to the clients
  double beta = 0.2;                ///< trimmed_mean: the fraction cut at each end
  double numMalicious = 0;          ///< krum, multikrum: f, the updates assumed Byzantine
  double numToKeep = 0;             ///< multikrum: updates averaged (0: n - f)
  double maxStaleness = 5;          ///< fedbuff: versions an update may lag; more: 409
  /// Robust rules, asked for by the job (`"per_leaf": true`): each leaf applies the rule to
  /// its own updates and the model is the mean of the leaves' results weighted by their
  /// update counts, an approximation that lets a round use the hierarchy.
  bool perLeaf = false;

  std::string name() const;
  /// Float vectors of model size the top keeps between rounds (momentum, second moment).
  uint32_t stateVectors() const;
  /// True when the top takes a server step from the global model (it needs that model).
  bool serverStep() const { return stateVectors() > 0; }
  /// True for the robust strategies: they need every update of the round at one aggregator
  /// (they do not decompose over a hierarchy), so such a round runs on a single level.
  bool robust() const {
    return kind == StrategyKind::Median || kind == StrategyKind::TrimmedMean ||
           kind == StrategyKind::Krum || kind == StrategyKind::MultiKrum;
  }
  /// FedBuff (Nguyen et al., 2022): no round barrier. A "round" is a buffer of K deltas; an
  /// update trained from an older global version is taken, down-weighted by its staleness.
  bool asynchronous() const { return kind == StrategyKind::FedBuff; }
  /// The weight factor of an update `staleness` versions behind: 1/sqrt(1 + tau).
  double stalenessFactor(uint32_t staleness) const;
  /// A robust round that runs on a single level (the exact rule over every update).
  bool singleLevel() const { return robust() && !perLeaf; }
  bool krum() const { return kind == StrategyKind::Krum || kind == StrategyKind::MultiKrum; }
  nlohmann::json toJson() const;
};

/// Parses the `strategy` object of a job spec: its name and that strategy's parameters
/// (unknown ones are refused, so that a typo does not silently run the defaults).
Result<Strategy> strategyFromJson(const nlohmann::json& doc);

}  // namespace lifl
