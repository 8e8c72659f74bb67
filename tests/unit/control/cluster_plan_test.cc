// The cluster plan: shares follow arrivals (or slots), add up to the round exactly, every
// node gets gateway-local leaves, and only one edge per non-root node with updates crosses
// nodes. Checked against a direct count over the plan's parent links.
#include "lifl/control/cluster_plan.h"

#include <gtest/gtest.h>

#include <numeric>

namespace lifl::control {
namespace {

/// Edges whose child and parent sit on different nodes, counted from the plan itself.
uint32_t crossEdges(const ClusterPlan& p) {
  uint32_t n = 0;
  for (size_t i = 0; i < p.plan.nodes.size(); ++i) {
    const int parent = p.plan.nodes[i].parent;
    if (parent >= 0 && p.nodeOf[i] != p.nodeOf[static_cast<size_t>(parent)]) n++;
  }
  return n;
}

TEST(ClusterPlan, SharesFollowLastRoundsArrivals) {
  auto p = planCluster(200, 8, {{"a", 64, 100}, {"b", 64, 60}, {"c", 64, 40}});
  EXPECT_EQ(p.shares.at("a"), 100u);
  EXPECT_EQ(p.shares.at("b"), 60u);
  EXPECT_EQ(p.shares.at("c"), 40u);
  EXPECT_EQ(p.root, "a");
  EXPECT_EQ(p.crossNodeEdges, 2u);
  EXPECT_EQ(crossEdges(p), 2u);
  // Leaves: ceil(100/8) + ceil(60/8) + ceil(40/8) = 13 + 8 + 5; middles for b and c; a top.
  EXPECT_EQ(p.plan.leaves, 26u);
  EXPECT_EQ(p.plan.middles, 2u);
  EXPECT_EQ(p.plan.nodes.back().role, AggregatorRole::Top);
  EXPECT_EQ(p.nodeOf.back(), "a");
  uint32_t covered = 0;
  for (const auto& n : p.plan.nodes)
    if (n.role == AggregatorRole::Leaf) covered += n.expected;
  EXPECT_EQ(covered, 200u);
}

TEST(ClusterPlan, SlotsSplitTheFirstRoundAndSharesAlwaysAddUp) {
  for (uint32_t clients : {1u, 7u, 200u, 1001u}) {
    auto p = planCluster(clients, 8, {{"a", 3, 0}, {"b", 5, 0}, {"c", 1, 0}, {"d", 7, 0}});
    uint32_t sum = 0;
    for (const auto& [_, s] : p.shares) sum += s;
    EXPECT_EQ(sum, clients);
    EXPECT_EQ(p.root, "d") << "the node with the most slots expects the most updates";
    EXPECT_EQ(crossEdges(p), 3u) << "every non-root node has a subtree root under the top";
    for (size_t i = 0; i < p.plan.nodes.size(); ++i)  // leaves stay on their node's subtree
      if (p.plan.nodes[i].role == AggregatorRole::Leaf)
        EXPECT_EQ(p.nodeOf[i], p.nodeOf[static_cast<size_t>(p.plan.nodes[i].parent)]);
  }
}

TEST(ClusterPlan, ANodesSubtreeFitsItsSlots) {
  // 100 updates expected at "small", which hosts 5 aggregators: 4 leaves of 25 beside its
  // subtree root, instead of 13 leaves of 8 that it cannot hold.
  auto p = planCluster(200, 8, {{"big", 64, 100}, {"small", 5, 100}});
  uint32_t leavesOnSmall = 0, coveredOnSmall = 0;
  for (size_t i = 0; i < p.plan.nodes.size(); ++i)
    if (p.nodeOf[i] == "small" && p.plan.nodes[i].role == AggregatorRole::Leaf) {
      leavesOnSmall++;
      coveredOnSmall += p.plan.nodes[i].expected;
    }
  EXPECT_EQ(leavesOnSmall, 4u);
  EXPECT_EQ(coveredOnSmall, 100u);
  EXPECT_EQ(p.fanIns.at("small"), 25u);
  EXPECT_EQ(p.fanIns.at("big"), 8u);
}

TEST(ClusterPlan, OneNodeHasNoCrossNodeEdge) {
  auto p = planCluster(50, 8, {{"solo", 4, 0}});
  EXPECT_EQ(p.crossNodeEdges, 0u);
  EXPECT_EQ(p.plan.middles, 0u);
  EXPECT_EQ(p.plan.leaves, 3u);  // 4 slots: 3 leaves of 17 beside the top
  EXPECT_EQ(p.fanIns.at("solo"), 17u);
}

}  // namespace
}  // namespace lifl::control
