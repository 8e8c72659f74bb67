// The job spec of API.md, parsed and validated once at the edge (JSON or YAML). Everything
// behind the edge works with this struct and never sees the raw document.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "lifl/common/dtype.h"
#include "lifl/common/error.h"
#include "lifl/common/strategy.h"

namespace lifl {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  uint64_t elements = 0;
};

enum class ModelInit { None, Zeros, Random };
enum class UpdateMode { Weights, Delta };
/// What happens to an update that arrives after its round closed at the deadline.
enum class LatePolicy { Drop, NextRound };

/// Central differential privacy (docs/strategies.md): each client's update (a delta) is
/// clipped to `clipNorm` in L2 at the leaves; the top adds Gaussian noise of standard
/// deviation noiseMultiplier * clipNorm / clients to the round's mean.
struct DpSpec {
  double clipNorm = 0;  ///< 0: off
  double noiseMultiplier = 0;
  bool enabled() const { return clipNorm > 0; }
  double noiseStd(uint32_t clients) const {
    return clients ? noiseMultiplier * clipNorm / clients : 0;
  }
};

struct JobSpec {
  std::string id;
  std::vector<TensorSpec> tensors;  ///< sorted by name: the layout of every accumulator
  ModelInit init = ModelInit::None;
  uint64_t seed = 0;
  uint32_t clientsPerRound = 1;
  uint32_t minClients = 0;  ///< 0: all of clientsPerRound
  uint32_t rounds = 1;
  UpdateMode update = UpdateMode::Weights;
  Strategy strategy;
  DpSpec dp;
  uint32_t fanIn = 8;
  uint32_t levels = 0;  ///< 0: the planner chooses; 1: one aggregator; 2: + leaves; 3: + middles
  bool eager = true;    ///< fold each update as it arrives (false: buffer all, fold at the end)
  uint32_t batch = 0;   ///< partial batch size; 0: a leaf forwards once, at its fan-in
  double deadlineSeconds = 600;
  LatePolicy late = LatePolicy::Drop;
  /// Where the leaves fold: "cpu", "cuda" (the GPU where one is present, else the CPU with a
  /// log line), or "" (not named: the node's `functions.device`).
  std::string device;

  uint64_t modelElements() const;
  uint32_t requiredClients() const { return minClients ? minClients : clientsPerRound; }
  nlohmann::json toJson() const;
};

/// Parses a job spec from a request body; `contentType` picks JSON or YAML.
Result<JobSpec> parseJobSpec(std::string_view body, std::string_view contentType);
Result<JobSpec> jobSpecFromJson(const nlohmann::json& doc);
/// YAML text to the equivalent JSON document (scalars typed as YAML 1.2 core schema).
Result<nlohmann::json> yamlToJson(std::string_view text);

}  // namespace lifl
