// Placement: which node runs each aggregator of a plan. Pure functions (STYLE.md 1), so
// they are tested on synthetic clusters without any process.
//
// LIFL's released code pairs trainers, leaves and middles round-robin and leaves its best-fit
// placement unimplemented (reference/lifl.md). Here best-fit bin packing places subtrees:
// a parent and its children go to one node when they fit, so their edges stay in shared
// memory; a subtree that fits nowhere is split, its root placed first and each child
// subtree packed, largest first, into the fullest node that still holds it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lifl/common/plan.h"

namespace lifl::control {

struct NodeCapacity {
  std::string id;
  uint32_t slots = 0;  ///< aggregators the node can host (from its CPU/memory budget)
};

struct Placement {
  std::vector<int> nodeOf;      ///< per plan node: index into the cluster's nodes
  uint32_t crossNodeEdges = 0;  ///< child-parent pairs on different nodes
  uint32_t nodesUsed = 0;
  bool feasible = false;  ///< false when the cluster has fewer slots than aggregators
};

/// Counts child-parent edges that cross nodes, and nodes used, for an assignment.
Placement describe(const Plan& plan, std::vector<int> nodeOf, uint32_t nodeCount);

/// Best-fit bin packing of subtrees (the planner's placement).
Placement placeBestFit(const Plan& plan, const std::vector<NodeCapacity>& nodes);

/// Round-robin over nodes with free slots, in plan order (what LIFL's code does); the
/// baseline of the placement tests.
Placement placeRoundRobin(const Plan& plan, const std::vector<NodeCapacity>& nodes);

}  // namespace lifl::control
