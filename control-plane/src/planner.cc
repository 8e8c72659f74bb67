#include "lifl/control/planner.h"

#include <algorithm>

namespace lifl {

nlohmann::json Plan::toJson() const {
  nlohmann::json nodesJson = nlohmann::json::array();
  for (const auto& n : nodes)
    nodesJson.push_back(
        {{"role", roleName(n.role)}, {"parent", n.parent}, {"expected", n.expected}});
  return {{"levels", middles ? 3 : 2},
          {"fan_in", fanIn},
          {"leaves", leaves},
          {"middles", middles},
          {"nodes", nodesJson}};
}

}  // namespace lifl

namespace lifl::control {

Plan planFixedTree(uint32_t expectedUpdates, uint32_t fanIn, uint32_t levels) {
  Plan plan;
  plan.fanIn = fanIn;
  const uint32_t n = std::max<uint32_t>(expectedUpdates, 1);
  plan.leaves = (n + fanIn - 1) / fanIn;
  plan.middles = levels >= 3 && plan.leaves > 1 ? (plan.leaves + fanIn - 1) / fanIn : 0;
  const int top = static_cast<int>(plan.leaves + plan.middles);
  for (uint32_t i = 0; i < plan.leaves; ++i) {
    const uint32_t covered = std::min(fanIn, n - i * fanIn);
    const int parent = plan.middles ? static_cast<int>(plan.leaves + i / fanIn) : top;
    plan.nodes.push_back({AggregatorRole::Leaf, parent, covered});
  }
  for (uint32_t m = 0; m < plan.middles; ++m) {
    uint32_t covered = 0;
    for (uint32_t i = m * fanIn; i < std::min(plan.leaves, (m + 1) * fanIn); ++i)
      covered += plan.nodes[i].expected;
    plan.nodes.push_back({AggregatorRole::Middle, top, covered});
  }
  plan.nodes.push_back({AggregatorRole::Top, -1, n});
  return plan;
}

}  // namespace lifl::control
