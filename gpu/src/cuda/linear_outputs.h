// Where a linear layer's outputs go. A decode step is a chain of small kernels, each with its
// own fixed cost, so the projections that read the same input run as one matrix: q, k and v
// stacked, gate and up stacked. Each part's outputs go to its own [rows][width] array, as if
// it had been its own matrix.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace lifl::gpu::cuda::llm {

struct LinearOutputs {
  static constexpr int kMaxParts = 3;
  float* y[kMaxParts] = {};
  /// Part p is outputs [start[p], start[p] + width[p]) of the stacked matrix; outputs in no
  /// part (padding between parts) are dropped.
  uint32_t start[kMaxParts] = {}, width[kMaxParts] = {};
  int parts = 0;

  static LinearOutputs one(float* y, uint64_t out) {
    LinearOutputs o;
    o.add(y, 0, out);
    return o;
  }
  void add(float* to, uint64_t from, uint64_t outputs) {
    y[parts] = to;
    start[parts] = static_cast<uint32_t>(from);
    width[parts] = static_cast<uint32_t>(outputs);
    parts++;
  }
  /// The same outputs from row `rows` on.
  LinearOutputs from(uint64_t rows) const {
    LinearOutputs o = *this;
    for (int p = 0; p < parts; ++p) o.y[p] += rows * width[p];
    return o;
  }
  /// Output o of row r, or null where o is in no part.
  __device__ __forceinline__ float* at(uint32_t r, uint32_t o) const {
#pragma unroll
    for (int p = 0; p < kMaxParts; ++p)
      if (p < parts && o >= start[p] && o - start[p] < width[p])
        return y[p] + uint64_t{r} * width[p] + (o - start[p]);
    return nullptr;
  }
};

}  // namespace lifl::gpu::cuda::llm
