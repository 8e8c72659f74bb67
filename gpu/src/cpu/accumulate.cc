#include "lifl/gpu/accumulate.h"

#include <algorithm>
#include <bit>
#include <cstring>

// One clone per x86-64 level: v4 (AVX-512), v3 (AVX2 + F16C + FMA), baseline. The loops are
// written so that GCC vectorises each clone; bench/aggregation checks the achieved GB/s
// against a plain C roofline loop.
#define LIFL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

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

// One block of int8 values with its scale folded into the weight. `prev` may alias `out`
// (in place), so no __restrict on them; GCC versions the loop on a runtime overlap check.
LIFL_CLONES void int8Block(float* out, const float* prev, const int8_t* __restrict q, uint64_t n,
                           float ws) {
  if (prev)
    for (uint64_t i = 0; i < n; ++i) out[i] = prev[i] + ws * static_cast<float>(q[i]);
  else
    for (uint64_t i = 0; i < n; ++i) out[i] = ws * static_cast<float>(q[i]);
}

}  // namespace

void accumulateInt8(float* out, const float* prev, const int8_t* q, const float* scales,
                    uint64_t rows, uint64_t cols, uint32_t block, float w) {
  const uint64_t blocks = (cols + block - 1) / block;
  for (uint64_t r = 0; r < rows; ++r) {
    for (uint64_t b = 0; b < blocks; ++b) {
      const uint64_t begin = r * cols + b * block;
      const uint64_t n = std::min<uint64_t>(block, cols - b * block);
      int8Block(out + begin, prev ? prev + begin : nullptr, q + begin, n,
                w * scales[r * blocks + b]);
    }
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
