#include "lifl/gpu/accumulate.h"

#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstring>

#include "lifl/common/clones.h"

// One clone per x86-64 level: v4 (AVX-512), v3 (AVX2 + F16C + FMA), baseline. The loops are
// written so that GCC vectorises each clone; bench/aggregation checks the achieved GB/s
// against a plain C roofline loop.

namespace lifl::kernels {
namespace {

LIFL_CLONES void accumulateF32(float* __restrict acc, const float* __restrict x, uint64_t n,
                               float w) {
  for (uint64_t i = 0; i < n; ++i) acc[i] += w * x[i];
}

LIFL_CLONES void accumulateF16(float* __restrict acc, const _Float16* __restrict x, uint64_t n,
                               float w) {
  for (uint64_t i = 0; i < n; ++i) acc[i] += w * static_cast<float>(x[i]);
}

LIFL_CLONES void accumulateBF16(float* __restrict acc, const uint16_t* __restrict x, uint64_t n,
                                float w) {
  for (uint64_t i = 0; i < n; ++i) {
    acc[i] += w * std::bit_cast<float>(static_cast<uint32_t>(x[i]) << 16);
  }
}

LIFL_CLONES void accumulateIntoF32(float* __restrict out, const float* __restrict prev,
                                   const float* __restrict x, uint64_t n, float w) {
  for (uint64_t i = 0; i < n; ++i) out[i] = prev[i] + w * x[i];
}

LIFL_CLONES void accumulateIntoF16(float* __restrict out, const float* __restrict prev,
                                   const _Float16* __restrict x, uint64_t n, float w) {
  for (uint64_t i = 0; i < n; ++i) out[i] = prev[i] + w * static_cast<float>(x[i]);
}

LIFL_CLONES void accumulateIntoBF16(float* __restrict out, const float* __restrict prev,
                                    const uint16_t* __restrict x, uint64_t n, float w) {
  for (uint64_t i = 0; i < n; ++i)
    out[i] = prev[i] + w * std::bit_cast<float>(static_cast<uint32_t>(x[i]) << 16);
}

LIFL_CLONES void assignF32(float* __restrict acc, const float* __restrict x, uint64_t n, float w) {
  for (uint64_t i = 0; i < n; ++i) acc[i] = w * x[i];
}

LIFL_CLONES void assignF16(float* __restrict acc, const _Float16* __restrict x, uint64_t n,
                           float w) {
  for (uint64_t i = 0; i < n; ++i) acc[i] = w * static_cast<float>(x[i]);
}

LIFL_CLONES void assignBF16(float* __restrict acc, const uint16_t* __restrict x, uint64_t n,
                            float w) {
  for (uint64_t i = 0; i < n; ++i)
    acc[i] = w * std::bit_cast<float>(static_cast<uint32_t>(x[i]) << 16);
}

LIFL_CLONES void addF32(float* __restrict acc, const float* __restrict x, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) acc[i] += x[i];
}

LIFL_CLONES void scaleF32(float* __restrict out, const float* __restrict acc, uint64_t n, float s) {
  for (uint64_t i = 0; i < n; ++i) out[i] = acc[i] * s;
}

LIFL_CLONES void scaleAddF32(float* __restrict out, const float* __restrict acc, uint64_t n,
                             float s, const float* __restrict base) {
  for (uint64_t i = 0; i < n; ++i) out[i] = base[i] + acc[i] * s;
}

LIFL_CLONES void toBF16Loop(uint16_t* __restrict out, const float* __restrict x, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) {
    const uint32_t bits = std::bit_cast<uint32_t>(x[i]);
    const uint32_t rounded = bits + 0x7fffu + ((bits >> 16) & 1u);
    const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
    out[i] =
        nan ? static_cast<uint16_t>((bits >> 16) | 0x40u) : static_cast<uint16_t>(rounded >> 16);
  }
}

// Columns [c0, c1) of one row of blockwise int8 values, each block's scale folded into the
// weight; the pointers are at column c0 and `scales` at the row's first block. `prev` may
// alias `out` (in place), so no __restrict on them; GCC versions the loop on a runtime
// overlap check.
LIFL_CLONES void int8RowSpan(float* out, const float* prev, const int8_t* __restrict q,
                             const float* __restrict scales, uint64_t c0, uint64_t c1,
                             uint32_t block, float w) {
  for (uint64_t c = c0; c < c1;) {
    const uint64_t end = std::min<uint64_t>(c1, (c / block + 1) * block);
    const float ws = w * scales[c / block];
    const uint64_t n = end - c, at = c - c0;
    if (prev)
      for (uint64_t i = 0; i < n; ++i)
        out[at + i] = prev[at + i] + ws * static_cast<float>(q[at + i]);
    else
      for (uint64_t i = 0; i < n; ++i) out[at + i] = ws * static_cast<float>(q[at + i]);
    c = end;
  }
}

// Full blocks of one row of several int8 inputs (the same layout), 64 values at a time:
// their sums stay in four registers while every input's values are added, in input order
// and with the roundings of single folds (one FMA per input). `q[k]` and `scales[k]` are at
// the row's first block. Written with AVX-512 intrinsics because GCC 12, given the loop
// over inputs, jams it and leaves the block scalar; other CPUs take the chunked path.
// GCC 12 warns of an uninitialised variable inside its own AVX-512 headers here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f,avx512bw"))) inline __m512 widenInt8(const int8_t* x) {
  return _mm512_cvtepi32_ps(
      _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x))));
}

__attribute__((target("avx512f,avx512bw"))) void int8RowGroupAvx512(
    float* out, const float* prev, const int8_t* const* q, const float* const* scales,
    const float* weights, size_t count, uint64_t blocks, uint64_t block) {
  for (uint64_t b = 0; b < blocks; ++b)
    for (uint64_t at = b * block; at < (b + 1) * block; at += 64) {
      __m512 a[4];
      const __m512 w0 = _mm512_set1_ps(weights[0] * scales[0][b]);
      for (int j = 0; j < 4; ++j) {
        const __m512 x = widenInt8(q[0] + at + 16 * j);
        a[j] = prev ? _mm512_fmadd_ps(w0, x, _mm512_loadu_ps(prev + at + 16 * j))
                    : _mm512_mul_ps(w0, x);
      }
      for (size_t k = 1; k < count; ++k) {
        const __m512 w = _mm512_set1_ps(weights[k] * scales[k][b]);
        for (int j = 0; j < 4; ++j) a[j] = _mm512_fmadd_ps(w, widenInt8(q[k] + at + 16 * j), a[j]);
      }
      for (int j = 0; j < 4; ++j) _mm512_storeu_ps(out + at + 16 * j, a[j]);
    }
}

#pragma GCC diagnostic pop

bool hasAvx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return yes;
}

/// Values [b, e) of one input into out (at b): out = prev + w x (prev null: w x).
void foldRange(float* out, const float* prev, const FoldInput& in, uint64_t b, uint64_t e) {
  if (in.scales) {  // blockwise int8: a row segment at a time
    const uint64_t blocks = (in.cols + in.block - 1) / in.block;
    const auto* q = static_cast<const int8_t*>(in.values);
    for (uint64_t i = b; i < e;) {
      const uint64_t r = i / in.cols, c0 = i - r * in.cols;
      const uint64_t c1 = std::min(in.cols, c0 + (e - i));
      int8RowSpan(out + (i - b), prev ? prev + (i - b) : nullptr, q + i, in.scales + r * blocks, c0,
                  c1, in.block, in.weight);
      i += c1 - c0;
    }
    return;
  }
  const uint64_t n = e - b;
  const auto* x = static_cast<const std::byte*>(in.values) + b * dtypeSize(in.dtype);
  if (!prev)
    assign(out, x, in.dtype, n, in.weight);
  else if (prev == out)
    accumulate(out, x, in.dtype, n, in.weight);
  else
    accumulateInto(out, prev, x, in.dtype, n, in.weight);
}

}  // namespace

void accumulateInt8(float* out, const float* prev, const int8_t* q, const float* scales,
                    uint64_t rows, uint64_t cols, uint32_t block, float w) {
  const uint64_t blocks = (cols + block - 1) / block;
  for (uint64_t r = 0; r < rows; ++r)
    int8RowSpan(out + r * cols, prev ? prev + r * cols : nullptr, q + r * cols, scales + r * blocks,
                0, cols, block, w);
}

void accumulateMany(float* out, const float* prev, const FoldInput* inputs, size_t count,
                    uint64_t n) {
  if (count == 0) return;
  const bool int8Group = std::all_of(inputs, inputs + count, [&](const FoldInput& in) {
    return in.scales && in.cols == inputs[0].cols && in.block == inputs[0].block &&
           (in.block == 64 || in.block == 128);
  });
  if (int8Group && count <= kMaxFused && hasAvx512()) {
    // Queued int8 updates: a row at a time, each block of it summed over every input while
    // the block's sums are in L1; a row's ragged last block input by input.
    const uint64_t cols = inputs[0].cols, block = inputs[0].block;
    const uint64_t blocks = (cols + block - 1) / block, full = cols / block;
    const int8_t* q[kMaxFused];
    const float* scales[kMaxFused];
    float weights[kMaxFused];
    for (size_t k = 0; k < count; ++k) weights[k] = inputs[k].weight;
    for (uint64_t r = 0; r * cols < n; ++r) {
      const uint64_t at = r * cols;
      for (size_t k = 0; k < count; ++k) {
        q[k] = static_cast<const int8_t*>(inputs[k].values) + at;
        scales[k] = inputs[k].scales + r * blocks;
      }
      const float* p = prev ? prev + at : nullptr;
      int8RowGroupAvx512(out + at, p, q, scales, weights, count, full, block);
      for (size_t k = 0; full < blocks && k < count; ++k) {
        const uint64_t c0 = full * block;
        int8RowSpan(out + at + c0, k == 0 ? (p ? p + c0 : nullptr) : out + at + c0, q[k] + c0,
                    scales[k], c0, cols, block, weights[k]);
      }
    }
    return;
  }
  // Otherwise a chunk of the accumulator at a time, every input folded into it while it is
  // in L1: memory sees the inputs' bytes and 8 bytes per value, not 8 per value per input.
  // Small chunks keep the inputs' streams advancing together, which the prefetchers follow.
  constexpr uint64_t kChunk = 512;
  for (uint64_t b = 0; b < n; b += kChunk) {
    const uint64_t e = std::min(n, b + kChunk);
    for (size_t k = 0; k < count; ++k)
      foldRange(out + b, k == 0 ? (prev ? prev + b : nullptr) : out + b, inputs[k], b, e);
  }
}

void toBF16(uint16_t* out, const float* x, uint64_t n) { toBF16Loop(out, x, n); }

void accumulate(float* acc, const void* x, DType dtype, uint64_t n, float w) {
  switch (dtype) {
    case DType::F32:
      return accumulateF32(acc, static_cast<const float*>(x), n, w);
    case DType::F16:
      return accumulateF16(acc, static_cast<const _Float16*>(x), n, w);
    case DType::BF16:
      return accumulateBF16(acc, static_cast<const uint16_t*>(x), n, w);
  }
}

void accumulateInto(float* out, const float* prev, const void* x, DType dtype, uint64_t n,
                    float w) {
  switch (dtype) {
    case DType::F32:
      return accumulateIntoF32(out, prev, static_cast<const float*>(x), n, w);
    case DType::F16:
      return accumulateIntoF16(out, prev, static_cast<const _Float16*>(x), n, w);
    case DType::BF16:
      return accumulateIntoBF16(out, prev, static_cast<const uint16_t*>(x), n, w);
  }
}

void assign(float* acc, const void* x, DType dtype, uint64_t n, float w) {
  switch (dtype) {
    case DType::F32:
      return assignF32(acc, static_cast<const float*>(x), n, w);
    case DType::F16:
      return assignF16(acc, static_cast<const _Float16*>(x), n, w);
    case DType::BF16:
      return assignBF16(acc, static_cast<const uint16_t*>(x), n, w);
  }
}

void addInto(float* acc, const float* x, uint64_t n) { addF32(acc, x, n); }

void scaleInto(float* out, const float* acc, uint64_t n, double scale, const float* base) {
  if (base)
    scaleAddF32(out, acc, n, static_cast<float>(scale), base);
  else
    scaleF32(out, acc, n, static_cast<float>(scale));
}

}  // namespace lifl::kernels
