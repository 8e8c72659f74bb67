// The kernel library's backends (lifl/gpu/device.h) against a double-precision reference:
// the CPU reference always, CUDA where a device is present (elsewhere those tests are skipped
// with a message saying so). Fresh random inputs per test; every output is poisoned (NaN)
// before the call that must overwrite it.
//
// Tolerance: the reference sums the exact input values (F16/BF16 as stored, int8 as q times
// its scale) in double; the kernels add one fp32 rounding per input, so the norm-wise relative
// error ||got - ref|| / ||ref|| stays near count * 2^-24. We assert < 1e-6 for every format
// (the bound for F32; tighter than its 1e-3 for F16/BF16, since the reference uses
// the stored 16-bit values, not the fp32 values they were rounded from).
#include "lifl/gpu/device.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <vector>

namespace lifl::gpu {

// ctest names the parameterised cases by their printed parameter.
void PrintTo(Backend b, std::ostream* os) { *os << backendName(b); }

namespace {

constexpr double kTolerance = 1e-6;

uint16_t toBf16(float f) { return static_cast<uint16_t>(std::bit_cast<uint32_t>(f) >> 16); }
float fromBf16(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

/// One input in host memory, in a format, with its exact values in double.
struct Input {
  std::vector<std::byte> values;
  std::vector<float> scales;  ///< int8 only
  std::vector<double> exact;
  kernels::FoldInput fold;
};

/// `misalign` shifts the values by 4 bytes from 16-byte alignment (the kernels' scalar path).
Input makeInput(std::mt19937& rng, int format, uint64_t rows, uint64_t cols, float weight,
                bool misalign = false) {
  std::uniform_real_distribution<float> d(-2.f, 2.f);
  std::uniform_int_distribution<int> q(-127, 127);
  const uint64_t n = rows * cols;
  Input in;
  in.exact.resize(n);
  const size_t shift = misalign ? 4 : 0;
  auto at = [&](size_t bytes) {
    in.values.assign(bytes + 16, std::byte{0});
    auto base = reinterpret_cast<uintptr_t>(in.values.data());
    return reinterpret_cast<std::byte*>((base + 15) / 16 * 16 + shift);
  };
  in.fold.weight = weight;
  in.fold.cols = cols;
  switch (format) {
    case 0: {  // F32
      auto* x = reinterpret_cast<float*>(at(n * 4));
      for (uint64_t i = 0; i < n; ++i) in.exact[i] = x[i] = d(rng);
      in.fold.values = x;
      in.fold.dtype = DType::F32;
      break;
    }
    case 1: {  // F16
      auto* x = reinterpret_cast<_Float16*>(at(n * 2));
      for (uint64_t i = 0; i < n; ++i) in.exact[i] = static_cast<double>(x[i] = _Float16(d(rng)));
      in.fold.values = x;
      in.fold.dtype = DType::F16;
      break;
    }
    case 2: {  // BF16
      auto* x = reinterpret_cast<uint16_t*>(at(n * 2));
      for (uint64_t i = 0; i < n; ++i) in.exact[i] = fromBf16(x[i] = toBf16(d(rng)));
      in.fold.values = x;
      in.fold.dtype = DType::BF16;
      break;
    }
    default: {  // int8, block 64 (format 3) or 128 (format 4)
      const uint32_t block = format == 3 ? 64 : 128;
      const uint64_t blocks = (cols + block - 1) / block;
      auto* x = reinterpret_cast<int8_t*>(at(n));
      in.scales.resize(rows * blocks);
      for (auto& s : in.scales) s = std::abs(d(rng)) / 127.f;
      for (uint64_t i = 0; i < n; ++i) {
        x[i] = static_cast<int8_t>(q(rng));
        in.exact[i] = double{in.scales[(i / cols) * blocks + (i % cols) / block]} * x[i];
      }
      in.fold.values = x;
      in.fold.scales = in.scales.data();
      in.fold.block = block;
      break;
    }
  }
  return in;
}

double relativeError(const std::vector<float>& got, const std::vector<double>& ref) {
  double err = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    err += (got[i] - ref[i]) * (got[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  return std::sqrt(err / std::max(norm, 1e-300));
}

class Backends : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    if (GetParam() == Backend::Cuda && !cudaInfo().usable)
      GTEST_SKIP() << "SKIPPED: no CUDA device here (" << cudaInfo().why
                   << "); run on the GPU machine";
  }
  std::unique_ptr<Accumulator> accumulator(uint64_t n) {
    auto acc = Accumulator::create(GetParam(), n);
    EXPECT_TRUE(acc.has_value());
    // Poisoned: a fold that starts the sums must overwrite every value.
    std::vector<float> nan(n, std::nanf(""));
    kernels::FoldInput poison{nan.data(), DType::F32, nullptr, n, 64, 1.f};
    EXPECT_TRUE(acc.value()->fold(0, &poison, 1, n, /*first=*/true).has_value());
    return std::move(acc).value();
  }
  std::vector<float> sums(Accumulator& acc) {
    std::vector<float> out(acc.size(), std::nanf(""));
    EXPECT_TRUE(acc.copyTo(out.data()).has_value());
    return out;
  }
};

TEST_P(Backends, FusedFoldOfEveryFormatMatchesDouble) {
  std::mt19937 rng(std::random_device{}());
  // Shapes: aligned rows (vector path), a ragged last block and an odd length (scalar path).
  for (auto [rows, cols] : {std::pair<uint64_t, uint64_t>{64, 1024}, {7, 300}, {1, 1001}}) {
    for (int format = 0; format < 5; ++format) {
      for (size_t count : {1u, 3u, 8u, 11u}) {  // 11: more than one launch
        for (bool misalign : {false, true}) {
          const uint64_t n = rows * cols;
          std::vector<Input> inputs;
          std::vector<kernels::FoldInput> folds;
          for (size_t k = 0; k < count; ++k) {
            inputs.push_back(makeInput(rng, format, rows, cols, 0.25f + k, misalign));
            folds.push_back(inputs.back().fold);
          }
          auto acc = accumulator(n);
          ASSERT_TRUE(acc->fold(0, folds.data(), count, n, /*first=*/true).has_value());
          // A second fold adds onto the sums: ref = 2 * sum.
          ASSERT_TRUE(acc->fold(0, folds.data(), count, n, /*first=*/false).has_value());
          std::vector<double> ref(n, 0.0);
          for (const auto& in : inputs)
            for (uint64_t i = 0; i < n; ++i) ref[i] += 2.0 * in.fold.weight * in.exact[i];
          EXPECT_LT(relativeError(sums(*acc), ref), kTolerance)
              << backendName(GetParam()) << " format " << format << " count " << count << " rows "
              << rows << " cols " << cols << (misalign ? " misaligned" : "");
        }
      }
    }
  }
}

TEST_P(Backends, MixedFormatsAndRangesFoldInOrder) {
  std::mt19937 rng(std::random_device{}());
  const uint64_t rows = 16, cols = 256, n = rows * cols;
  std::vector<Input> inputs;
  std::vector<kernels::FoldInput> folds;
  for (int format : {0, 3, 1, 2, 4, 0}) {
    inputs.push_back(makeInput(rng, format, rows, cols, 1.5f));
    folds.push_back(inputs.back().fold);
  }
  // The same inputs folded into the second half of a 2n accumulator: `at` is honoured and
  // the first half keeps its own sums.
  auto acc = accumulator(2 * n);
  ASSERT_TRUE(acc->fold(0, folds.data(), 1, n, true).has_value());
  ASSERT_TRUE(acc->fold(n, folds.data(), folds.size(), n, true).has_value());
  std::vector<double> ref(2 * n, 0.0);
  for (uint64_t i = 0; i < n; ++i) ref[i] = 1.5 * inputs[0].exact[i];
  for (const auto& in : inputs)
    for (uint64_t i = 0; i < n; ++i) ref[n + i] += 1.5 * in.exact[i];
  EXPECT_LT(relativeError(sums(*acc), ref), kTolerance);
}

TEST_P(Backends, ScaleIntoWithAndWithoutBase) {
  std::mt19937 rng(std::random_device{}());
  const uint64_t n = 100003;
  Input in = makeInput(rng, 0, 1, n, 3.f);
  Input base = makeInput(rng, 0, 1, n, 1.f);
  auto acc = accumulator(n);
  ASSERT_TRUE(acc->fold(0, &in.fold, 1, n, true).has_value());
  const double scale = 1.0 / 7.0;
  for (bool withBase : {false, true}) {
    std::vector<float> out(n, std::nanf(""));
    ASSERT_TRUE(acc->scaleInto(out.data(), scale,
                               withBase ? static_cast<const float*>(base.fold.values) : nullptr)
                    .has_value());
    std::vector<double> ref(n);
    for (uint64_t i = 0; i < n; ++i)
      ref[i] = 3.0 * in.exact[i] * scale + (withBase ? base.exact[i] : 0);
    EXPECT_LT(relativeError(out, ref), kTolerance) << (withBase ? "with base" : "no base");
  }
}

TEST_P(Backends, CountsNonFinite) {
  const uint64_t n = 1 << 20;
  std::vector<float> f(n, 1.5f);
  std::vector<_Float16> h(n, _Float16(1.5f));
  std::vector<uint16_t> b(n, toBf16(1.5f));
  const uint64_t where[] = {0, 4097, n - 1};
  const float bad[] = {std::nanf(""), INFINITY, -INFINITY};
  for (int k = 0; k < 3; ++k) {
    f[where[k]] = bad[k];
    h[where[k]] = _Float16(bad[k]);
    b[where[k]] = toBf16(bad[k]);
  }
  EXPECT_EQ(countNonFinite(GetParam(), f.data(), DType::F32, n).value(), 3u);
  EXPECT_EQ(countNonFinite(GetParam(), h.data(), DType::F16, n).value(), 3u);
  EXPECT_EQ(countNonFinite(GetParam(), b.data(), DType::BF16, n).value(), 3u);
  std::vector<float> big(4096, 3.4e38f);  // the largest finite values are not flagged
  EXPECT_EQ(countNonFinite(GetParam(), big.data(), DType::F32, big.size()).value(), 0u);
}

TEST_P(Backends, RegisteredAndDeviceResidentInputs) {
  // Host memory registered for the device (the store's segment: read zero-copy) and data
  // uploaded to the device give the same sums as plain host memory.
  std::mt19937 rng(std::random_device{}());
  const uint64_t rows = 32, cols = 4096, n = rows * cols;
  const size_t page = 4096;
  std::vector<std::byte> region(n * 4 + 2 * page);
  auto* aligned = reinterpret_cast<std::byte*>(
      (reinterpret_cast<uintptr_t>(region.data()) + page - 1) / page * page);
  ASSERT_TRUE(registerHostMemory(aligned, n * 4).has_value());
  Input in = makeInput(rng, 0, rows, cols, 2.f);
  std::memcpy(aligned, in.fold.values, n * 4);
  auto resident = DeviceBuffer::upload(GetParam(), in.fold.values, n * 4);
  ASSERT_TRUE(resident.has_value());
  kernels::FoldInput fromRegistered = in.fold, fromDevice = in.fold;
  fromRegistered.values = aligned;
  fromDevice.values = resident.value()->data();
  std::vector<double> ref(n);
  for (uint64_t i = 0; i < n; ++i) ref[i] = 2.0 * in.exact[i];
  for (const auto* f : {&fromRegistered, &fromDevice, &in.fold}) {
    auto acc = accumulator(n);
    ASSERT_TRUE(acc->fold(0, f, 1, n, true).has_value());
    EXPECT_LT(relativeError(sums(*acc), ref), kTolerance);
  }
  EXPECT_TRUE(unregisterHostMemory(aligned).has_value());  // before the memory is freed
}

TEST_P(Backends, PipelinedAndZeroCopyReadsOfTheStoreAgree) {
  // Registered inputs (int8 with ragged rows, and F32) read through the mapping and copied in
  // by the 3-stream pipeline, with 256 KB stages so that a fold takes many chunks (int8
  // chunks start at a row, F32 ones anywhere): the same sums, bit for bit, and within the
  // bound of the reference.
  std::mt19937 rng(std::random_device{}());
  const uint64_t rows = 300, cols = 1040, n = rows * cols;  // 1040: 16 blocks of 64 + 16
  for (int format : {3, 4, 0}) {
    std::vector<Input> inputs;
    for (int k = 0; k < 5; ++k) inputs.push_back(makeInput(rng, format, rows, cols, 0.5f + k));
    const size_t valueBytes = format == 0 ? 4 : 1, page = 4096;
    std::vector<std::byte> region(5 * n * valueBytes + 6 * page);
    auto* base = reinterpret_cast<std::byte*>(
        (reinterpret_cast<uintptr_t>(region.data()) + page - 1) / page * page);
    std::vector<kernels::FoldInput> folds;
    for (int k = 0; k < 5; ++k) {
      std::byte* at = base + k * ((n * valueBytes + page - 1) / page * page);
      std::memcpy(at, inputs[k].fold.values, n * valueBytes);
      folds.push_back(inputs[k].fold);
      folds.back().values = at;
    }
    ASSERT_TRUE(registerHostMemory(base, region.data() + region.size() - base).has_value());
    std::vector<double> ref(n, 0.0);
    for (const auto& in : inputs)
      for (uint64_t i = 0; i < n; ++i) ref[i] += in.fold.weight * in.exact[i];
    std::vector<std::vector<float>> got;
    for (auto mode : {HostInputs::ZeroCopy, HostInputs::Pipelined}) {
      setHostInputs(mode, 256 << 10);
      auto acc = accumulator(n);
      ASSERT_TRUE(acc->fold(0, folds.data(), folds.size(), n, true).has_value());
      got.push_back(sums(*acc));
      EXPECT_LT(relativeError(got.back(), ref), kTolerance) << "format " << format;
    }
    setHostInputs(HostInputs::Auto);
    EXPECT_EQ(std::memcmp(got[0].data(), got[1].data(), n * sizeof(float)), 0);
    EXPECT_TRUE(unregisterHostMemory(base).has_value());
  }
}

TEST(GpuBackend, PicksTheCpuWithoutADevice) {
  EXPECT_EQ(pickBackend(false), Backend::Cpu);
  EXPECT_EQ(pickBackend(true), cudaInfo().usable ? Backend::Cuda : Backend::Cpu);
  if (!cudaInfo().usable) {
    EXPECT_FALSE(cudaInfo().why.empty());
    EXPECT_FALSE(Accumulator::create(Backend::Cuda, 16).has_value());
  }
}

INSTANTIATE_TEST_SUITE_P(CpuAndCuda, Backends, ::testing::Values(Backend::Cpu, Backend::Cuda),
                         [](const auto& info) { return std::string(backendName(info.param)); });

}  // namespace
}  // namespace lifl::gpu
