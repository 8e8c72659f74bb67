// kernels::llm::roundToBf16, what a BF16 KV page holds of a value (the CPU's side of
// --kv-cache bf16), against a reference written here by another route: the two BF16 values
// either side of x (its truncation and the next one away from zero), the nearer taken in
// double precision, a tie to the one whose last mantissa bit is 0. Exact equality: rounding
// has one right answer.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "lifl/gpu/llm.h"

namespace lifl::kernels::llm {
namespace {

float reference(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint32_t down = bits & 0xFFFF0000u, up = down + 0x10000u;
  const double below = std::bit_cast<float>(down);
  const double above = std::bit_cast<float>(up);  // may be infinity: then never nearer
  const double dBelow = std::fabs(double{x} - below), dAbove = std::fabs(above - double{x});
  if (dBelow < dAbove) return std::bit_cast<float>(down);
  if (dAbove < dBelow) return std::bit_cast<float>(up);
  return std::bit_cast<float>((down & 0x10000u) ? up : down);
}

TEST(RoundToBf16, TiesGoToEvenAndSpecialValuesHold) {
  EXPECT_EQ(roundToBf16(1.0f), 1.0f);
  EXPECT_EQ(roundToBf16(1.0f + 0x1p-8f), 1.0f);                       // tie: the even one below
  EXPECT_EQ(roundToBf16(1.0f + 3 * 0x1p-8f), 1.0f + 0x1p-6f);         // tie: the even one above
  EXPECT_EQ(roundToBf16(1.0f + 0x1p-8f + 0x1p-20f), 1.0f + 0x1p-7f);  // past the tie
  EXPECT_EQ(roundToBf16(-1.0f - 3 * 0x1p-8f), -1.0f - 0x1p-6f);
  EXPECT_EQ(roundToBf16(std::numeric_limits<float>::max()), std::numeric_limits<float>::infinity());
  EXPECT_EQ(roundToBf16(-std::numeric_limits<float>::infinity()),
            -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(roundToBf16(std::nanf(""))));
  EXPECT_EQ(roundToBf16(0.0f), 0.0f);
  const float subnormal = std::numeric_limits<float>::denorm_min() * 3;
  EXPECT_EQ(roundToBf16(subnormal), reference(subnormal));
}

TEST(RoundToBf16, EqualsTheNearestOfItsTwoNeighbours) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits;
  int checked = 0;
  for (int i = 0; i < 200000; ++i) {
    const float x = std::bit_cast<float>(bits(rng));
    if (!std::isfinite(x) || std::fabs(x) > 3.0e38f) continue;  // the top binade: see above
    ASSERT_EQ(std::bit_cast<uint32_t>(roundToBf16(x)), std::bit_cast<uint32_t>(reference(x))) << x;
    ++checked;
  }
  EXPECT_GT(checked, 190000);
}

}  // namespace
}  // namespace lifl::kernels::llm
