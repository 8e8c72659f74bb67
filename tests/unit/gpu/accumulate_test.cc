// The CPU aggregation kernels against a double-precision loop. Tolerances: each output is one
// fp32 multiply-add of exactly representable inputs (F16/BF16 widen exactly), so the relative
// error bound is 2^-23 (< 1.2e-7) per element; we assert 2.5e-7 of max(|ref|, |acc|+|w x|).
#include "lifl/gpu/accumulate.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace lifl::kernels {
namespace {

uint16_t toBf16(float f) { return static_cast<uint16_t>(std::bit_cast<uint32_t>(f) >> 16); }
double fromBf16(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

class AccumulateTest : public ::testing::TestWithParam<DType> {};

TEST_P(AccumulateTest, MatchesDoubleLoop) {
  std::mt19937 rng(static_cast<unsigned>(GetParam()) * 31 + 5);
  std::uniform_real_distribution<float> dist(-2.f, 2.f);
  for (uint64_t n : {1ull, 7ull, 64ull, 1000ull, 100003ull}) {
    std::vector<float> acc(n);
    std::vector<double> ref(n);
    for (uint64_t i = 0; i < n; ++i) ref[i] = acc[i] = dist(rng);
    std::vector<float> xf(n);
    std::vector<_Float16> xh(n);
    std::vector<uint16_t> xb(n);
    std::vector<double> x(n);
    for (uint64_t i = 0; i < n; ++i) {
      float v = dist(rng);
      xf[i] = v;
      xh[i] = static_cast<_Float16>(v);
      xb[i] = toBf16(v);
      x[i] = GetParam() == DType::F32   ? v
             : GetParam() == DType::F16 ? static_cast<double>(xh[i])
                                        : fromBf16(xb[i]);
    }
    const void* input = GetParam() == DType::F32   ? static_cast<const void*>(xf.data())
                        : GetParam() == DType::F16 ? static_cast<const void*>(xh.data())
                                                   : static_cast<const void*>(xb.data());
    const float w = 37.0f;
    std::vector<float> assigned(n, std::nanf(""));  // poisoned: every element must be written
    assign(assigned.data(), input, GetParam(), n, w);
    for (uint64_t i = 0; i < n; ++i)
      ASSERT_LE(std::abs(assigned[i] - w * x[i]), 1.2e-7 * std::abs(w * x[i]) + 1e-30)
          << "assign i=" << i;
    std::vector<float> into(n, std::nanf(""));  // poisoned, as above
    accumulateInto(into.data(), acc.data(), input, GetParam(), n, w);
    accumulate(acc.data(), input, GetParam(), n, w);
    ASSERT_EQ(std::memcmp(into.data(), acc.data(), n * sizeof(float)), 0)
        << "folding into a new accumulator must give the in-place fold's bits";
    for (uint64_t i = 0; i < n; ++i) {
      const double expect = ref[i] + w * x[i];
      const double scale = std::max(std::abs(ref[i]) + std::abs(w * x[i]), 1e-30);
      ASSERT_LE(std::abs(acc[i] - expect) / scale, 2.5e-7) << "n=" << n << " i=" << i;
    }
  }
}

TEST_P(AccumulateTest, CountsNonFinite) {
  const uint64_t n = 4099;
  std::vector<float> f(n, 1.5f);
  std::vector<_Float16> h(n, static_cast<_Float16>(1.5f));
  std::vector<uint16_t> b(n, toBf16(1.5f));
  const float bad[] = {std::nanf(""), INFINITY, -INFINITY};
  const uint64_t where[] = {0, 2048, n - 1};
  for (int k = 0; k < 3; ++k) {
    f[where[k]] = bad[k];
    h[where[k]] = static_cast<_Float16>(bad[k]);
    b[where[k]] = toBf16(bad[k]);
  }
  const void* input = GetParam() == DType::F32   ? static_cast<const void*>(f.data())
                      : GetParam() == DType::F16 ? static_cast<const void*>(h.data())
                                                 : static_cast<const void*>(b.data());
  EXPECT_EQ(countNonFinite(input, GetParam(), n), 3u);
  EXPECT_EQ(countNonFinite(input, GetParam(), 2048), 1u);
  // Largest finite values are not flagged.
  std::vector<float> big(16, 3.4e38f);
  EXPECT_EQ(countNonFinite(big.data(), DType::F32, big.size()), 0u);
}

INSTANTIATE_TEST_SUITE_P(DTypes, AccumulateTest,
                         ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         [](const auto& info) { return std::string(dtypeName(info.param)); });

TEST(Accumulate, AddIntoAndScale) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  const uint64_t n = 10007;
  std::vector<float> acc(n), x(n), base(n), out(n);
  for (uint64_t i = 0; i < n; ++i) {
    acc[i] = dist(rng);
    x[i] = dist(rng);
    base[i] = dist(rng);
  }
  std::vector<float> before = acc;
  addInto(acc.data(), x.data(), n);
  for (uint64_t i = 0; i < n; ++i)
    ASSERT_NEAR(acc[i], static_cast<double>(before[i]) + x[i], 2.5e-7 * 2);
  const double s = 1.0 / 3.0;
  scaleInto(out.data(), acc.data(), n, s, nullptr);
  for (uint64_t i = 0; i < n; ++i)
    ASSERT_NEAR(out[i], acc[i] * s, 1e-7 * std::abs(acc[i] * s) + 1e-12);
  scaleInto(out.data(), acc.data(), n, s, base.data());
  for (uint64_t i = 0; i < n; ++i) ASSERT_NEAR(out[i], base[i] + acc[i] * s, 5e-7);
}

}  // namespace
}  // namespace lifl::kernels

namespace lifl::kernels {
namespace {

// Blockwise int8 against a double loop: rows x cols with ragged last blocks, both block sizes,
// from nothing (poisoned output), into a separate accumulator, and in place. Each output is
// prev + (w * scale) * q in fp32: two roundings, so 2.5e-7 relative as above.
TEST(AccumulateInt8, MatchesDoubleLoop) {
  std::mt19937 rng(77);
  std::uniform_int_distribution<int> qd(-127, 127);
  std::uniform_real_distribution<float> fd(-1.f, 1.f);
  for (uint32_t block : {64u, 128u}) {
    for (auto [rows, cols] : {std::pair<uint64_t, uint64_t>{1, 1}, {3, 64}, {5, 100}, {2, 300}}) {
      const uint64_t blocks = (cols + block - 1) / block, n = rows * cols;
      std::vector<int8_t> q(n);
      std::vector<float> scales(rows * blocks), prev(n);
      for (auto& v : q) v = static_cast<int8_t>(qd(rng));
      for (auto& s : scales) s = std::abs(fd(rng)) / 127.f;
      for (auto& p : prev) p = fd(rng);
      const float w = 3.5f;
      std::vector<double> ref(n), refFresh(n);
      for (uint64_t r = 0; r < rows; ++r)
        for (uint64_t j = 0; j < cols; ++j) {
          const double x = double{w} * scales[r * blocks + j / block] * q[r * cols + j];
          refFresh[r * cols + j] = x;
          ref[r * cols + j] = prev[r * cols + j] + x;
        }
      auto check = [&](const std::vector<float>& got, const std::vector<double>& want,
                       const char* what) {
        for (uint64_t i = 0; i < n; ++i)
          ASSERT_LE(std::abs(got[i] - want[i]), 2.5e-7 * (std::abs(want[i]) + 2.0))
              << what << " block=" << block << " rows=" << rows << " cols=" << cols << " i=" << i;
      };
      std::vector<float> fresh(n, std::nanf(""));
      accumulateInt8(fresh.data(), nullptr, q.data(), scales.data(), rows, cols, block, w);
      check(fresh, refFresh, "fresh");
      std::vector<float> into(n, std::nanf(""));
      accumulateInt8(into.data(), prev.data(), q.data(), scales.data(), rows, cols, block, w);
      check(into, ref, "into");
      std::vector<float> inPlace = prev;
      accumulateInt8(inPlace.data(), inPlace.data(), q.data(), scales.data(), rows, cols, block, w);
      check(inPlace, ref, "in place");
    }
  }
}

}  // namespace
}  // namespace lifl::kernels
