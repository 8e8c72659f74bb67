// Aggregation kernels: the weighted accumulate acc += w * x that every aggregator runs, with
// inputs widened from F32/F16/BF16 on the fly (never expanded into a temporary), and the
// finite check used by update validation. The CPU versions are vectorised through function
// multi-versioning (AVX-512, AVX2/F16C, baseline), picked at load time for the host CPU.
#pragma once

#include <cstdint>

#include "lifl/common/dtype.h"

namespace lifl::kernels {

/// acc[i] += w * x[i] for i < n, where x holds n elements of `dtype`.
/// @pre acc and x do not overlap.
void accumulate(float* acc, const void* x, DType dtype, uint64_t n, float w);

/// acc[i] = w * x[i]: the first input of a fresh accumulator (saves zeroing it first).
void assign(float* acc, const void* x, DType dtype, uint64_t n, float w);

/// out[i] = prev[i] + w * x[i]: folding into a new accumulator, so that the previous one
/// stays intact (a parent's checkpoint) at the cost of an in-place fold.
/// @pre out, prev and x do not overlap.
void accumulateInto(float* out, const float* prev, const void* x, DType dtype, uint64_t n, float w);

/// Blockwise int8 input, dequantised on the fly: over rows x cols,
/// out[r][j] = prev[r][j] + w * scales[r][j / block] * q[r][j], with ceil(cols / block) scales
/// per row. prev null: the first input (no previous sums); prev may be out (in place).
void accumulateInt8(float* out, const float* prev, const int8_t* q, const float* scales,
                    uint64_t rows, uint64_t cols, uint32_t block, float w);

/// One input of a fused fold: F32/F16/BF16 values, or blockwise int8 (`values` the int8
/// tensor, `scales` non-null, laid out as in accumulateInt8 with rows of `cols`).
struct FoldInput {
  const void* values = nullptr;
  DType dtype = DType::F32;
  const float* scales = nullptr;
  uint64_t cols = 1;
  uint32_t block = 64;
  float weight = 1;
};

/// The N-input fused fold: out[i] = prev[i] + sum_k w_k x_k[i] over n values, cache-blocked
/// so that the accumulator crosses memory once for all `count` inputs (what makes a quarter
/// of the bytes per int8 input a quarter of the time). prev null: the sum alone; prev may
/// be out (in place). The inputs are added in order, each rounded as accumulate() does, so
/// the result has the bits of `count` single folds.
void accumulateMany(float* out, const float* prev, const FoldInput* inputs, size_t count,
                    uint64_t n);
/// The most inputs accumulateMany sums in one pass over a block (more are fine: they fold in
/// several passes).
inline constexpr size_t kMaxFused = 8;

/// acc[i] += x[i] (folding a partial sum into its parent).
void addInto(float* acc, const float* x, uint64_t n);

/// out[i] = acc[i] * scale (+ base[i] when base is not null).
void scaleInto(float* out, const float* acc, uint64_t n, double scale, const float* base);

/// out[i] = x[i] rounded to BF16 (nearest, ties to even; NaN stays NaN): a model served in
/// half the bytes.
void toBF16(uint16_t* out, const float* x, uint64_t n);

/// Sum of squares of the n elements of `dtype` at x (for an update's L2 norm), accumulated in
/// fp32 over blocks of 4096 and in double across them.
double sumSquares(const void* x, DType dtype, uint64_t n);
/// The same for blockwise int8 values (q * scale), laid out as in accumulateInt8.
double sumSquaresInt8(const int8_t* q, const float* scales, uint64_t rows, uint64_t cols,
                      uint32_t block);

/// Number of NaN/Inf values among the n elements of `dtype` at x.
uint64_t countNonFinite(const void* x, DType dtype, uint64_t n);

}  // namespace lifl::kernels
