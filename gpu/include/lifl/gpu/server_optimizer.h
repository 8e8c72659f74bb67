// The server optimisers' step at the top (docs/strategies.md): from the round's weighted sum
// to the next global model, in one pass over the model, updating the optimiser's state.
#pragma once

#include <cstdint>

#include "lifl/common/strategy.h"

namespace lifl::kernels {

struct ServerStepInputs {
  const float* acc;     ///< sum of n_i * u_i over the round's updates
  double invWeight;     ///< 1 / sum of n_i
  const float* global;  ///< the global model the round started from (x_t)
  bool delta;           ///< updates are deltas from x_t (else weights)
  /// The state after the previous round (stateVectors() vectors of n); null: zero (round 1).
  const float* stateIn;
};

/// out = x_{t+1}; stateOut receives the new state (stateVectors() vectors of n).
/// @pre strategy.serverStep()
void serverStep(const Strategy& strategy, const ServerStepInputs& in, float* out, float* stateOut,
                uint64_t n);

}  // namespace lifl::kernels
