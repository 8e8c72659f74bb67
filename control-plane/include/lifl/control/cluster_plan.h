// The tree of one round across nodes. Updates are folded on the node whose gateway accepted
// them (raw updates never cross nodes), so each node runs a subtree of gateway-local leaves
// under one node aggregator; one node, the root, also runs the top. Every other node with
// updates sends exactly one partial across the network per round: the fewest cross-node
// edges a tree over spread arrivals can have. Pure function, unit-tested without processes.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lifl/common/plan.h"

namespace lifl::control {

struct NodeLoad {
  std::string node;
  uint32_t slots = 0;   ///< aggregators the node can host
  double arrivals = 0;  ///< updates its gateway accepted last round (0: unknown)
};

struct ClusterPlan {
  Plan plan;                               ///< leaves, node aggregators (middles), one top
  std::vector<std::string> nodeOf;         ///< per plan node
  std::string root;                        ///< the node of the top
  std::map<std::string, uint32_t> shares;  ///< expected updates per node
  std::map<std::string, uint32_t> fanIns;  ///< updates per leaf on each node
  uint32_t crossNodeEdges = 0;             ///< partials that cross nodes per round
  nlohmann::json toJson() const;
};

/// Splits `clients` over the nodes in proportion to last round's arrivals (or, before any,
/// to their slots), gives each node ceil(share / fan_in) leaves (at least one: clients may
/// pick any gateway) under its node aggregator, and roots the tree on the node expecting
/// the most updates. A node's subtree is bounded by its slots (its capacity): when the
/// leaves would not fit beside the subtree root, fewer leaves take more updates each.
/// `nodes` must not be empty.
ClusterPlan planCluster(uint32_t clients, uint32_t fanIn, const std::vector<NodeLoad>& nodes);

}  // namespace lifl::control
