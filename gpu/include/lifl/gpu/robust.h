// The robust strategies' reduction (docs/strategies.md): per coordinate over n updates.
#pragma once

#include <cstdint>
#include <vector>

#include "lifl/common/strategy.h"

namespace lifl::kernels {

/// out[j] = the strategy's value over block[k * m + j] for k < n (n updates of m coordinates
/// each, laid out update after update). `block` is reordered.
/// @pre strategy.robust(), n > 0
void robustReduce(const Strategy& strategy, float* block, uint64_t n, uint64_t m, float* out);

/// Krum's distances: dist[a * n + b] += squared L2 distance of updates a and b over this
/// block (n updates of m coordinates, laid out as above); called block after block.
void addSquaredDistances(const float* block, uint64_t n, uint64_t m, double* dist);

/// The updates Krum keeps, best first: each update's score is the sum of its distances to
/// its max(1, n - f - 2) nearest others; krum keeps the best one, multikrum `keep` of them
/// (0: n - f), as Flower's Krum.
std::vector<uint32_t> krumSelect(const Strategy& strategy, const double* dist, uint64_t n);

}  // namespace lifl::kernels
