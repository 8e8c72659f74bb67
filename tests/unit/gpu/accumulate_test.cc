// The CPU aggregation kernels against a double-precision loop. Tolerances: each output is one
// fp32 multiply-add of exactly representable inputs (F16/BF16 widen exactly), so the relative
// error bound is 2^-23 (< 1.2e-7) per element; we assert 2.5e-7 of max(|ref|, |acc|+|w x|).
#include "lifl/gpu/accumulate.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
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

// One input's value at flat index i of a rows x cols tensor, in double.
double valueOf(const FoldInput& in, uint64_t i) {
  if (in.scales) {
    const uint64_t blocks = (in.cols + in.block - 1) / in.block;
    const uint64_t r = i / in.cols, c = i % in.cols;
    return double{in.scales[r * blocks + c / in.block]} * static_cast<const int8_t*>(in.values)[i];
  }
  switch (in.dtype) {
    case DType::F16:
      return static_cast<double>(static_cast<const _Float16*>(in.values)[i]);
    case DType::BF16:
      return fromBf16(static_cast<const uint16_t*>(in.values)[i]);
    default:
      return static_cast<const float*>(in.values)[i];
  }
}

// The same inputs folded one at a time by the single-input kernels; from is null (fresh), a
// separate accumulator, or out itself (in place).
void foldOneAtATime(float* out, const float* from, const std::vector<FoldInput>& inputs,
                    uint64_t rows, uint64_t n) {
  for (size_t k = 0; k < inputs.size(); ++k) {
    const FoldInput& in = inputs[k];
    const float* p = k == 0 ? from : out;
    if (in.scales)
      accumulateInt8(out, p, static_cast<const int8_t*>(in.values), in.scales, rows, in.cols,
                     in.block, in.weight);
    else if (!p)
      assign(out, in.values, in.dtype, n, in.weight);
    else if (p == out)
      accumulate(out, in.values, in.dtype, n, in.weight);
    else
      accumulateInto(out, p, in.values, in.dtype, n, in.weight);
  }
}

// accumulateMany from nothing, into a new accumulator and in place: bit for bit against
// foldOneAtATime, and within 2.5e-7 per input (one fp32 rounding each) of the running
// magnitude of a double loop.
void expectFusedMatchesSingleFolds(const std::vector<FoldInput>& inputs,
                                   const std::vector<float>& prev, uint64_t rows,
                                   const std::string& label) {
  const uint64_t n = prev.size();
  for (int mode = 0; mode < 3; ++mode) {
    std::vector<float> fused(n, std::nanf("")), single(n, std::nanf(""));
    if (mode == 2) fused = single = prev;
    const float* fusedPrev = mode == 0 ? nullptr : mode == 1 ? prev.data() : fused.data();
    const float* singlePrev = mode == 0 ? nullptr : mode == 1 ? prev.data() : single.data();
    accumulateMany(fused.data(), fusedPrev, inputs.data(), inputs.size(), n);
    foldOneAtATime(single.data(), singlePrev, inputs, rows, n);
    ASSERT_EQ(std::memcmp(fused.data(), single.data(), n * sizeof(float)), 0)
        << label << " mode " << mode;
    for (uint64_t i = 0; i < n; ++i) {
      double want = mode == 0 ? 0.0 : prev[i], magnitude = std::abs(want);
      for (const FoldInput& in : inputs) {
        const double x = in.weight * valueOf(in, i);
        want += x;
        magnitude += std::abs(x);
      }
      ASSERT_LE(std::abs(fused[i] - want), 2.5e-7 * inputs.size() * magnitude + 1e-30)
          << label << " mode " << mode << " i=" << i;
    }
  }
}

// The N-input fused fold over inputs of every format (F32, F16, BF16, int8 blocks of 64 and
// 128) and a length spanning several of its chunks with rows that cross chunk boundaries.
TEST(AccumulateMany, MatchesSingleFoldsAndDoubleLoop) {
  std::mt19937 rng(91);
  std::uniform_real_distribution<float> fd(-1.f, 1.f);
  std::uniform_int_distribution<int> qd(-127, 127);
  const uint64_t rows = 7, cols = 1300, n = rows * cols;  // 9100 values: 3 chunks of 4096
  std::vector<float> f32(n), prev(n);
  std::vector<_Float16> f16(n);
  std::vector<uint16_t> bf16(n);
  std::vector<int8_t> q64(n), q128(n);
  std::vector<float> s64(rows * ((cols + 63) / 64)), s128(rows * ((cols + 127) / 128));
  for (uint64_t i = 0; i < n; ++i) {
    f32[i] = fd(rng);
    f16[i] = static_cast<_Float16>(fd(rng));
    bf16[i] = toBf16(fd(rng));
    q64[i] = static_cast<int8_t>(qd(rng));
    q128[i] = static_cast<int8_t>(qd(rng));
    prev[i] = fd(rng);
  }
  for (auto& s : s64) s = std::abs(fd(rng)) / 127.f;
  for (auto& s : s128) s = std::abs(fd(rng)) / 127.f;
  const std::vector<FoldInput> inputs = {
      {f32.data(), DType::F32, nullptr, cols, 64, 2.0f},
      {q64.data(), DType::F32, s64.data(), cols, 64, 3.0f},
      {f16.data(), DType::F16, nullptr, cols, 64, 0.5f},
      {bf16.data(), DType::BF16, nullptr, cols, 64, 1.5f},
      {q128.data(), DType::F32, s128.data(), cols, 128, 7.0f},
  };
  expectFusedMatchesSingleFolds(inputs, prev, rows, "mixed formats");
}

// A queue of int8 updates of one layout (what a leaf behind its queue folds at once) takes
// the block-by-block path: for both block sizes, rows with a ragged last block, 1 to 8 inputs.
TEST(AccumulateMany, Int8QueueMatchesSingleFolds) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> fd(-1.f, 1.f);
  std::uniform_int_distribution<int> qd(-127, 127);
  for (uint32_t block : {64u, 128u}) {
    const uint64_t rows = 3, cols = 1300, n = rows * cols, blocks = (cols + block - 1) / block;
    std::vector<std::vector<int8_t>> q(kMaxFused, std::vector<int8_t>(n));
    std::vector<std::vector<float>> scales(kMaxFused, std::vector<float>(rows * blocks));
    std::vector<float> prev(n);
    for (auto& input : q)
      for (auto& v : input) v = static_cast<int8_t>(qd(rng));
    for (auto& input : scales)
      for (auto& s : input) s = std::abs(fd(rng)) / 127.f;
    for (auto& p : prev) p = fd(rng);
    for (size_t count = 1; count <= kMaxFused; ++count) {
      std::vector<FoldInput> inputs;
      for (size_t k = 0; k < count; ++k)
        inputs.push_back({q[k].data(), DType::F32, scales[k].data(), cols, block, 0.5f + k});
      expectFusedMatchesSingleFolds(
          inputs, prev, rows, "block " + std::to_string(block) + " count " + std::to_string(count));
    }
  }
}

}  // namespace
}  // namespace lifl::kernels
