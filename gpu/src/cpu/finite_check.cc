#include <cstring>

#include "lifl/common/clones.h"
#include "lifl/gpu/accumulate.h"

namespace lifl::kernels {
namespace {

// A value is NaN or Inf exactly when all exponent bits are set; counting on the bit pattern
// keeps the loop branch-free and vectorisable.
LIFL_CLONES uint64_t nonFinite32(const uint32_t* __restrict x, uint64_t n) {
  uint64_t bad = 0;
  for (uint64_t i = 0; i < n; ++i) bad += (x[i] & 0x7f800000u) == 0x7f800000u;
  return bad;
}

LIFL_CLONES uint64_t nonFinite16(const uint16_t* __restrict x, uint64_t n, uint16_t expMask) {
  uint64_t bad = 0;
  for (uint64_t i = 0; i < n; ++i) bad += (x[i] & expMask) == expMask;
  return bad;
}

}  // namespace

uint64_t countNonFinite(const void* x, DType dtype, uint64_t n) {
  switch (dtype) {
    case DType::F32:
      return nonFinite32(static_cast<const uint32_t*>(x), n);
    case DType::F16:
      return nonFinite16(static_cast<const uint16_t*>(x), n, 0x7c00);
    case DType::BF16:
      return nonFinite16(static_cast<const uint16_t*>(x), n, 0x7f80);
  }
  return 0;
}

}  // namespace lifl::kernels
