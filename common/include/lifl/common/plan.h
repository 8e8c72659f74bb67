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
  uint32_t fanIn = 0;
  int top() const { return static_cast<int>(nodes.size()) - 1; }
  nlohmann::json toJson() const;
};

inline const char* roleName(AggregatorRole r) {
  return r == AggregatorRole::Top ? "top" : r == AggregatorRole::Middle ? "middle" : "leaf";
}

}  // namespace lifl
