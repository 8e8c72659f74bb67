// The planner: a pure function from a round's expected updates to the aggregation tree.
// In this version the tree is fixed by the job's hierarchy (fan-in and levels); sizing from
// arrival rates and measured throughput comes with the controller.
#pragma once

#include "lifl/common/job_spec.h"
#include "lifl/common/plan.h"

namespace lifl::control {

/// leaves = ceil(N / fan_in), each covering fan_in updates (the last one the remainder);
/// with 3 levels, middles = ceil(leaves / fan_in); one top.
Plan planFixedTree(uint32_t expectedUpdates, uint32_t fanIn, uint32_t levels);

}  // namespace lifl::control
