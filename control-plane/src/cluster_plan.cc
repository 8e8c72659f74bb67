#include "lifl/control/cluster_plan.h"

#include <algorithm>
#include <cmath>

namespace lifl::control {

ClusterPlan planCluster(uint32_t clients, uint32_t fanIn, const std::vector<NodeLoad>& nodes) {
  ClusterPlan out;
  fanIn = std::max<uint32_t>(fanIn, 1);
  double total = 0;
  const bool measured =
      std::any_of(nodes.begin(), nodes.end(), [](const NodeLoad& n) { return n.arrivals > 0; });
  auto weight = [&](const NodeLoad& n) {
    return measured ? n.arrivals : std::max<double>(n.slots, 1);
  };
  for (const auto& n : nodes) total += weight(n);
  // Largest-remainder split, so the shares add up to `clients` exactly.
  std::vector<uint32_t> share(nodes.size(), 0);
  std::vector<std::pair<double, size_t>> remainders;
  uint32_t given = 0;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const double exact = total > 0 ? clients * weight(nodes[i]) / total : 0;
    share[i] = static_cast<uint32_t>(std::floor(exact));
    given += share[i];
    remainders.push_back({exact - share[i], i});
  }
  std::stable_sort(remainders.begin(), remainders.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  for (size_t k = 0; given < clients && k < remainders.size(); ++k, ++given)
    share[remainders[k].second]++;
  size_t root = 0;
  for (size_t i = 1; i < nodes.size(); ++i)
    if (share[i] > share[root]) root = i;
  out.root = nodes.empty() ? "" : nodes[root].node;

  // Leaves of every node first, then the node aggregators of the non-root nodes, then the top.
  Plan& plan = out.plan;
  plan.fanIn = fanIn;
  std::vector<std::vector<size_t>> leavesOf(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    out.shares[nodes[i].node] = share[i];
    const uint32_t room = std::max<uint32_t>(nodes[i].slots, 2) - 1;  // beside the subtree root
    const uint32_t leaves = std::min(std::max<uint32_t>((share[i] + fanIn - 1) / fanIn, 1), room);
    const uint32_t nodeFanIn = std::max<uint32_t>((share[i] + leaves - 1) / leaves, fanIn);
    out.fanIns[nodes[i].node] = nodeFanIn;
    for (uint32_t l = 0; l < leaves; ++l) {
      leavesOf[i].push_back(plan.nodes.size());
      const uint32_t covered =
          share[i] > l * nodeFanIn ? std::min(nodeFanIn, share[i] - l * nodeFanIn) : 0;
      plan.nodes.push_back({AggregatorRole::Leaf, -1, covered});
      out.nodeOf.push_back(nodes[i].node);
    }
  }
  plan.leaves = static_cast<uint32_t>(plan.nodes.size());
  const int top = static_cast<int>(plan.leaves + nodes.size() - 1);
  for (size_t i = 0; i < nodes.size(); ++i) {
    int parent = top;
    if (i != root) {
      parent = static_cast<int>(plan.nodes.size());
      plan.nodes.push_back({AggregatorRole::Middle, top, share[i]});
      out.nodeOf.push_back(nodes[i].node);
      plan.middles++;
      if (share[i] > 0) out.crossNodeEdges++;
    }
    for (size_t leaf : leavesOf[i]) plan.nodes[leaf].parent = parent;
  }
  plan.nodes.push_back({AggregatorRole::Top, -1, clients});
  out.nodeOf.push_back(out.root);
  return out;
}

nlohmann::json ClusterPlan::toJson() const {
  nlohmann::json j = plan.toJson();
  for (size_t i = 0; i < nodeOf.size() && i < j["nodes"].size(); ++i)
    j["nodes"][i]["node"] = nodeOf[i];
  j["root"] = root;
  j["shares"] = shares;
  j["fan_ins"] = fanIns;
  j["cross_node_edges"] = crossNodeEdges;
  return j;
}

}  // namespace lifl::control
