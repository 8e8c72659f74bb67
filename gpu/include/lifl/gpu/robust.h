// The robust strategies' reduction (docs/strategies.md): per coordinate over n updates.
#pragma once

#include <cstdint>

#include "lifl/common/strategy.h"

namespace lifl::kernels {

/// out[j] = the strategy's value over block[k * m + j] for k < n (n updates of m coordinates
/// each, laid out update after update). `block` is reordered.
/// @pre strategy.robust(), n > 0
void robustReduce(const Strategy& strategy, float* block, uint64_t n, uint64_t m, float* out);

}  // namespace lifl::kernels
