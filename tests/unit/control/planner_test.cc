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

}  // namespace
}  // namespace lifl::control
