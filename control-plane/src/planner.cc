#include "lifl/control/planner.h"

#include <algorithm>
#include <cmath>

namespace lifl::control {

namespace {

/// leaves of `leafFanIn` updates each (the last the remainder), middles of `middleFanIn`
/// leaves each when `middles`, one top.
Plan buildTree(uint32_t n, uint32_t leafFanIn, uint32_t middleFanIn, bool middles) {
  Plan plan;
  plan.fanIn = leafFanIn;
  plan.leaves = (n + leafFanIn - 1) / leafFanIn;
  plan.middles = middles && plan.leaves > 1 ? (plan.leaves + middleFanIn - 1) / middleFanIn : 0;
  const uint32_t fanIn = leafFanIn;
  const int top = static_cast<int>(plan.leaves + plan.middles);
  for (uint32_t i = 0; i < plan.leaves; ++i) {
    const uint32_t covered = std::min(fanIn, n - i * fanIn);
    const int parent = plan.middles ? static_cast<int>(plan.leaves + i / middleFanIn) : top;
    plan.nodes.push_back({AggregatorRole::Leaf, parent, covered});
  }
  for (uint32_t m = 0; m < plan.middles; ++m) {
    uint32_t covered = 0;
    for (uint32_t i = m * middleFanIn; i < std::min(plan.leaves, (m + 1) * middleFanIn); ++i)
      covered += plan.nodes[i].expected;
    plan.nodes.push_back({AggregatorRole::Middle, top, covered});
  }
  plan.nodes.push_back({AggregatorRole::Top, -1, n});
  return plan;
}

}  // namespace

Plan planFixedTree(uint32_t expectedUpdates, uint32_t fanIn, uint32_t levels) {
  return buildTree(std::max<uint32_t>(expectedUpdates, 1), fanIn, fanIn, levels >= 3);
}

Plan planTree(const PlanRequest& r) {
  const uint32_t n = std::max<uint32_t>(r.expectedUpdates, 1);
  if (r.levels == 1) {  // one aggregator takes every update (the baseline of bench_round)
    Plan single;
    single.fanIn = n;
    single.leaves = 1;  // one routing slot, which is the top itself
    single.nodes.push_back({AggregatorRole::Top, -1, n});
    return single;
  }
  const uint32_t maxFanIn = std::max<uint32_t>(r.maxFanIn, 2);
  uint32_t leaves = (n + maxFanIn - 1) / maxFanIn;
  if (r.arrivalRate > 0 && r.leafThroughput > 0) {
    const double needed = std::ceil(r.arrivalRate * 1.25 / r.leafThroughput);
    leaves = std::max<uint32_t>(leaves, static_cast<uint32_t>(std::min<double>(needed, n)));
  }
  const uint32_t leafFanIn = (n + leaves - 1) / leaves;
  const uint32_t leafCount = (n + leafFanIn - 1) / leafFanIn;
  // Middles only when the top could not fold its children's partials as they come: a parent
  // folds a partial at about the rate a leaf folds an update (the same bytes), so the top
  // keeps up while the leaves send it fewer partials per second than half that rate. Its
  // memory does not depend on how many children it has (it folds each into a new sealed
  // accumulator), and each level adds a fold of every partial to the round's CPU and to the
  // time from the last update to the model. Without measurements, a top wider than the
  // fan-in squared gets middles.
  bool middles = false;
  if (r.levels)
    middles = r.levels >= 3;
  else if (leafCount <= maxFanIn)
    middles = false;
  else if (r.arrivalRate > 0 && r.leafThroughput > 0)
    middles = r.arrivalRate / leafFanIn > 0.5 * r.leafThroughput;
  else
    middles = leafCount > maxFanIn * maxFanIn;
  Plan plan = buildTree(n, leafFanIn, maxFanIn, middles);
  plan.arrivalRate = r.arrivalRate;
  plan.leafThroughput = r.leafThroughput;
  return plan;
}

}  // namespace lifl::control
