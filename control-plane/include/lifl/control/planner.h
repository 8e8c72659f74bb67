// The planner: a pure function from a round's expected updates, the arrival rate seen so
// far and the measured per-aggregator throughput to the aggregation tree.
#pragma once

#include "lifl/common/job_spec.h"
#include "lifl/common/plan.h"

namespace lifl::control {

/// leaves = ceil(N / fan_in), each covering fan_in updates (the last one the remainder);
/// with 3 levels, middles = ceil(leaves / fan_in); one top.
Plan planFixedTree(uint32_t expectedUpdates, uint32_t fanIn, uint32_t levels);

/// Sizes the tree so that its leaves keep up with the arrivals: enough leaves that each
/// folds its share of the arrival rate with 25% headroom, at most the job's fan-in updates
/// per leaf, and a middle level when the top would otherwise have more than fan-in children
/// (unless the job fixes the levels). Without measurements it is planFixedTree. With
/// levels 1 a single top takes every update (routing slot 0 is the top).
Plan planTree(const PlanRequest& request);

}  // namespace lifl::control
