#include "lifl/control/planner.h"

#include <gtest/gtest.h>

#include <numeric>

namespace lifl::control {
namespace {

TEST(Planner, TwoLevelTreeCoversEveryUpdateOnce) {
  for (uint32_t n : {1u, 7u, 8u, 9u, 50u, 64u, 1000u}) {
    Plan p = planFixedTree(n, 8, 2);
    EXPECT_EQ(p.leaves, (n + 7) / 8) << n;
    EXPECT_EQ(p.middles, 0u);
    uint32_t covered = 0;
    for (uint32_t i = 0; i < p.leaves; ++i) {
      EXPECT_EQ(p.nodes[i].role, AggregatorRole::Leaf);
      EXPECT_EQ(p.nodes[i].parent, p.top());
      EXPECT_LE(p.nodes[i].expected, 8u);
      covered += p.nodes[i].expected;
    }
    EXPECT_EQ(covered, n);
    EXPECT_EQ(p.nodes[p.top()].expected, n);
  }
}

TEST(Planner, ThreeLevelTreeSumsChildren) {
  Plan p = planFixedTree(50, 4, 3);
  EXPECT_EQ(p.leaves, 13u);
  EXPECT_EQ(p.middles, 4u);
  uint32_t middleSum = 0;
  for (size_t i = p.leaves; i < p.leaves + p.middles; ++i) {
    uint32_t children = 0;
    for (uint32_t l = 0; l < p.leaves; ++l)
      if (p.nodes[l].parent == static_cast<int>(i)) children += p.nodes[l].expected;
    EXPECT_EQ(children, p.nodes[i].expected);
    middleSum += p.nodes[i].expected;
  }
  EXPECT_EQ(middleSum, 50u);
}

TEST(Planner, WithoutMeasurementsTheJobsFanInDecides) {
  Plan p = planTree({.expectedUpdates = 50, .maxFanIn = 8});
  EXPECT_EQ(p.leaves, 7u);
  EXPECT_EQ(p.middles, 0u);
  EXPECT_EQ(p.fanIn, 8u);
}

TEST(Planner, MoreLeavesWhenArrivalsOutpaceFolding) {
  // 200 updates/s arriving, one leaf folds 20/s: 200 * 1.25 / 20 = 12.5 -> 13 leaves.
  Plan p =
      planTree({.expectedUpdates = 100, .maxFanIn = 16, .arrivalRate = 200, .leafThroughput = 20});
  EXPECT_EQ(p.leaves, 13u);
  EXPECT_EQ(p.fanIn, 8u);  // ceil(100 / 13)
  uint32_t covered = 0;
  for (uint32_t i = 0; i < p.leaves; ++i) covered += p.nodes[i].expected;
  EXPECT_EQ(covered, 100u);
  // Fast folding: the fan-in bound decides.
  Plan q =
      planTree({.expectedUpdates = 100, .maxFanIn = 16, .arrivalRate = 200, .leafThroughput = 1e6});
  EXPECT_EQ(q.leaves, 7u);
  // Never more leaves than updates.
  Plan r = planTree({.expectedUpdates = 5, .maxFanIn = 8, .arrivalRate = 1e6, .leafThroughput = 1});
  EXPECT_EQ(r.leaves, 5u);
}

TEST(Planner, AddsMiddlesWhenTheTopCouldNotKeepUp) {
  // Without measurements: middles above fan-in squared (64) leaves.
  Plan p = planTree({.expectedUpdates = 1000, .maxFanIn = 8});
  EXPECT_EQ(p.leaves, 125u);
  EXPECT_EQ(p.middles, 16u);  // ceil(125 / 8): the top has 16 children
  Plan fixed = planTree({.expectedUpdates = 1000, .maxFanIn = 8, .levels = 2});
  EXPECT_EQ(fixed.middles, 0u) << "the job can fix the levels";
  Plan small = planTree({.expectedUpdates = 40, .maxFanIn = 8});
  EXPECT_EQ(small.middles, 0u);
  Plan hundred = planTree({.expectedUpdates = 100, .maxFanIn = 8});
  EXPECT_EQ(hundred.leaves, 13u);
  EXPECT_EQ(hundred.middles, 0u) << "13 children: one top folds them";
  // Measured: 45 updates/s arriving, leaves fold 80/s. The top gets 45 / 8 = 5.6 partials/s,
  // under half of 80: one level is enough, however many leaves.
  Plan slow =
      planTree({.expectedUpdates = 1000, .maxFanIn = 8, .arrivalRate = 45, .leafThroughput = 80});
  EXPECT_EQ(slow.middles, 0u);
  // 2000 updates/s against 300/s a leaf: 2000 * 1.25 / 300 -> 9 leaves would do, the fan-in
  // bound makes 125, and they send the top 2000 / 8 = 250 partials/s, over half of 300.
  Plan fast = planTree(
      {.expectedUpdates = 1000, .maxFanIn = 8, .arrivalRate = 2000, .leafThroughput = 300});
  EXPECT_EQ(fast.middles, 16u);
}

}  // namespace
}  // namespace lifl::control
