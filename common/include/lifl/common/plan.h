// The shape of one round's aggregation tree, as the planner decides it. Nodes are indices;
// the agent maps them to function instances.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

namespace lifl {

enum class AggregatorRole { Leaf, Middle, Top };

struct PlanNode {
  AggregatorRole role = AggregatorRole::Leaf;
  int parent = -1;        ///< index into Plan::nodes; -1 for the top
  uint32_t expected = 0;  ///< client updates this aggregator covers in the round
};

struct Plan {
  std::vector<PlanNode> nodes;  ///< leaves first (in update order), then middles, then the top
  uint32_t leaves = 0;
  uint32_t middles = 0;
  uint32_t fanIn = 0;      ///< updates per leaf
  double arrivalRate = 0;  ///< the measurements the plan was sized from (0: none yet)
  double leafThroughput = 0;
  int top() const { return static_cast<int>(nodes.size()) - 1; }
  nlohmann::json toJson() const;
};

/// What the planner sizes a round from.
struct PlanRequest {
  uint32_t expectedUpdates = 1;
  uint32_t maxFanIn = 8;      ///< the job's hierarchy.fan_in
  uint32_t levels = 0;        ///< 2 or 3 when the job fixes it; 0 lets the planner choose
  double arrivalRate = 0;     ///< updates/s seen in the previous round (0: unknown)
  double leafThroughput = 0;  ///< updates/s one aggregator folds, measured (0: unknown)
};

inline const char* roleName(AggregatorRole r) {
  return r == AggregatorRole::Top ? "top" : r == AggregatorRole::Middle ? "middle" : "leaf";
}

}  // namespace lifl
