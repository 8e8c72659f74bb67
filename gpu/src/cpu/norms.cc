#include <algorithm>
#include <bit>

#include "lifl/common/clones.h"
#include "lifl/gpu/accumulate.h"

namespace lifl::kernels {
namespace {

constexpr uint64_t kChunk = 4096;  // fp32 partial sums stay accurate over this many terms

LIFL_CLONES float squaresF32(const float* __restrict x, uint64_t n) {
  float s = 0;
  for (uint64_t i = 0; i < n; ++i) s += x[i] * x[i];
  return s;
}
LIFL_CLONES float squaresF16(const _Float16* __restrict x, uint64_t n) {
  float s = 0;
  for (uint64_t i = 0; i < n; ++i) s += static_cast<float>(x[i]) * static_cast<float>(x[i]);
  return s;
}
LIFL_CLONES float squaresBF16(const uint16_t* __restrict x, uint64_t n) {
  float s = 0;
  for (uint64_t i = 0; i < n; ++i) {
    const float v = std::bit_cast<float>(static_cast<uint32_t>(x[i]) << 16);
    s += v * v;
  }
  return s;
}
LIFL_CLONES float squaresI8(const int8_t* __restrict q, uint64_t n) {
  float s = 0;
  for (uint64_t i = 0; i < n; ++i) s += static_cast<float>(q[i]) * static_cast<float>(q[i]);
  return s;
}

}  // namespace

double sumSquares(const void* x, DType dtype, uint64_t n) {
  double total = 0;
  for (uint64_t at = 0; at < n; at += kChunk) {
    const uint64_t m = std::min(kChunk, n - at);
    switch (dtype) {
      case DType::F32:
        total += squaresF32(static_cast<const float*>(x) + at, m);
        break;
      case DType::F16:
        total += squaresF16(static_cast<const _Float16*>(x) + at, m);
        break;
      case DType::BF16:
        total += squaresBF16(static_cast<const uint16_t*>(x) + at, m);
        break;
    }
  }
  return total;
}

double sumSquaresInt8(const int8_t* q, const float* scales, uint64_t rows, uint64_t cols,
                      uint32_t block) {
  const uint64_t blocks = (cols + block - 1) / block;
  double total = 0;
  for (uint64_t r = 0; r < rows; ++r)
    for (uint64_t b = 0; b < blocks; ++b) {
      const uint64_t begin = r * cols + b * block;
      const double s = scales[r * blocks + b];
      total += s * s * squaresI8(q + begin, std::min<uint64_t>(block, cols - b * block));
    }
  return total;
}

}  // namespace lifl::kernels
