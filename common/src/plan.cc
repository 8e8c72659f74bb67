#include "lifl/common/plan.h"

namespace lifl {

nlohmann::json Plan::toJson() const {
  nlohmann::json nodesJson = nlohmann::json::array();
  for (const auto& n : nodes)
    nodesJson.push_back(
        {{"role", roleName(n.role)}, {"parent", n.parent}, {"expected", n.expected}});
  return {{"levels", nodes.size() == 1 ? 1
                     : middles         ? 3
                                       : 2},
          {"fan_in", fanIn},
          {"leaves", leaves},
          {"middles", middles},
          {"nodes", nodesJson},
          {"sized_from", {{"arrival_rate", arrivalRate}, {"leaf_throughput", leafThroughput}}}};
}

}  // namespace lifl
