#include "lifl/control/placement.h"

#include <algorithm>
#include <functional>
#include <numeric>
#include <set>

namespace lifl::control {
namespace {

/// Children lists and subtree sizes of a plan.
struct Tree {
  std::vector<std::vector<int>> children;
  std::vector<uint32_t> size;
  int root = -1;

  explicit Tree(const Plan& plan) : children(plan.nodes.size()), size(plan.nodes.size(), 1) {
    for (size_t i = 0; i < plan.nodes.size(); ++i) {
      if (plan.nodes[i].parent >= 0)
        children[static_cast<size_t>(plan.nodes[i].parent)].push_back(static_cast<int>(i));
      else
        root = static_cast<int>(i);
    }
    std::function<uint32_t(int)> count = [&](int n) {
      uint32_t s = 1;
      for (int c : children[static_cast<size_t>(n)]) s += count(c);
      return size[static_cast<size_t>(n)] = s;
    };
    if (root >= 0) count(root);
  }
};

class BestFit {
 public:
  BestFit(const Plan& plan, const std::vector<NodeCapacity>& nodes)
      : tree_(plan), free_(nodes.size()), nodeOf_(plan.nodes.size(), -1) {
    for (size_t i = 0; i < nodes.size(); ++i) free_[i] = nodes[i].slots;
  }

  std::vector<int> run() {
    if (tree_.root >= 0) placeSubtree(tree_.root, -1);
    return nodeOf_;
  }

 private:
  /// The node with the least free slots that still holds `need` (-1: none). Ties go to
  /// the lower index, so results are deterministic.
  int bestFit(uint32_t need) const {
    int best = -1;
    for (size_t i = 0; i < free_.size(); ++i)
      if (free_[i] >= need && (best < 0 || free_[i] < free_[static_cast<size_t>(best)]))
        best = static_cast<int>(i);
    return best;
  }
  int mostFree() const {
    int best = -1;
    for (size_t i = 0; i < free_.size(); ++i)
      if (free_[i] > 0 && (best < 0 || free_[i] > free_[static_cast<size_t>(best)]))
        best = static_cast<int>(i);
    return best;
  }

  void assignAll(int n, int node) {
    nodeOf_[static_cast<size_t>(n)] = node;
    free_[static_cast<size_t>(node)]--;
    for (int c : tree_.children[static_cast<size_t>(n)]) assignAll(c, node);
  }

  /// Places the subtree of `n`, preferring the node of its parent.
  void placeSubtree(int n, int parentNode) {
    const uint32_t need = tree_.size[static_cast<size_t>(n)];
    if (parentNode >= 0 && free_[static_cast<size_t>(parentNode)] >= need)
      return assignAll(n, parentNode);
    if (int node = bestFit(need); node >= 0) return assignAll(n, node);
    // Fits nowhere whole: the root goes with its parent if it can (one edge saved), else to
    // the node with the most room (so most of its children can join it).
    int node =
        parentNode >= 0 && free_[static_cast<size_t>(parentNode)] > 0 ? parentNode : mostFree();
    if (node < 0) return;  // infeasible: left unplaced
    nodeOf_[static_cast<size_t>(n)] = node;
    free_[static_cast<size_t>(node)]--;
    auto kids = tree_.children[static_cast<size_t>(n)];
    std::stable_sort(kids.begin(), kids.end(), [&](int a, int b) {
      return tree_.size[static_cast<size_t>(a)] > tree_.size[static_cast<size_t>(b)];
    });
    for (int c : kids) placeSubtree(c, node);
  }

  Tree tree_;
  std::vector<uint32_t> free_;
  std::vector<int> nodeOf_;
};

}  // namespace

Placement describe(const Plan& plan, std::vector<int> nodeOf, uint32_t nodeCount) {
  Placement p;
  p.nodeOf = std::move(nodeOf);
  p.feasible = std::none_of(p.nodeOf.begin(), p.nodeOf.end(), [](int n) { return n < 0; });
  std::vector<bool> used(nodeCount, false);
  for (size_t i = 0; i < plan.nodes.size(); ++i) {
    if (p.nodeOf[i] >= 0) used[static_cast<size_t>(p.nodeOf[i])] = true;
    const int parent = plan.nodes[i].parent;
    if (parent >= 0 && p.nodeOf[i] != p.nodeOf[static_cast<size_t>(parent)]) p.crossNodeEdges++;
  }
  p.nodesUsed = static_cast<uint32_t>(std::count(used.begin(), used.end(), true));
  return p;
}

Placement placeBestFit(const Plan& plan, const std::vector<NodeCapacity>& nodes) {
  return describe(plan, BestFit(plan, nodes).run(), static_cast<uint32_t>(nodes.size()));
}

Placement placeRoundRobin(const Plan& plan, const std::vector<NodeCapacity>& nodes) {
  std::vector<uint32_t> free(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) free[i] = nodes[i].slots;
  std::vector<int> nodeOf(plan.nodes.size(), -1);
  size_t next = 0;
  for (size_t i = 0; i < plan.nodes.size(); ++i) {
    for (size_t tries = 0; tries < nodes.size(); ++tries, next = (next + 1) % nodes.size()) {
      if (free[next] > 0) {
        nodeOf[i] = static_cast<int>(next);
        free[next]--;
        next = (next + 1) % nodes.size();
        break;
      }
    }
  }
  return describe(plan, std::move(nodeOf), static_cast<uint32_t>(nodes.size()));
}

}  // namespace lifl::control
