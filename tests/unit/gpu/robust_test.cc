// The robust reductions against a sort per coordinate in double: every count of updates from
// 1 to 70 (the sorting network is built per count; padding positions must never matter),
// with ties and an outlier. Median: exact (a value, or the mean of two, rounded once);
// trimmed mean: fp32 rows summed in double, so 1e-6 relative.
#include "lifl/gpu/robust.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace lifl::kernels {
namespace {

TEST(RobustReduce, MatchesASortPerCoordinate) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> coarse(-20, 20);  // coarse values: ties are common
  for (uint64_t n = 1; n <= 70; ++n) {
    const uint64_t m = 37;
    std::vector<float> data(n * m);
    for (auto& v : data) v = static_cast<float>(coarse(rng)) / 4.f;
    data[0] = 1e6f;  // an outlier in the first coordinate
    for (auto kind : {StrategyKind::Median, StrategyKind::TrimmedMean}) {
      Strategy s;
      s.kind = kind;
      s.beta = 0.2;
      std::vector<float> block = data, out(m, std::nanf(""));
      robustReduce(s, block.data(), n, m, out.data());
      for (uint64_t j = 0; j < m; ++j) {
        std::vector<double> col(n);
        for (uint64_t k = 0; k < n; ++k) col[k] = data[k * m + j];
        std::sort(col.begin(), col.end());
        double want;
        if (kind == StrategyKind::Median) {
          want = n % 2 ? col[n / 2] : (col[n / 2 - 1] + col[n / 2]) / 2;
        } else {
          const auto cut = static_cast<uint64_t>(0.2 * static_cast<double>(n));
          double sum = 0;
          for (uint64_t k = cut; k < n - cut; ++k) sum += col[k];
          want = sum / static_cast<double>(n - 2 * cut);
        }
        ASSERT_LE(std::abs(out[j] - want), 1e-6 * std::max(1.0, std::abs(want)))
            << (kind == StrategyKind::Median ? "median" : "trimmed") << " n=" << n << " j=" << j;
      }
    }
  }
}

}  // namespace
}  // namespace lifl::kernels
