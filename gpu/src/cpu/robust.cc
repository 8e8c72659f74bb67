#include "lifl/gpu/robust.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "lifl/common/clones.h"

namespace lifl::kernels {
namespace {

using Network = std::vector<std::pair<uint32_t, uint32_t>>;

// Batcher's odd-even merge sort for n inputs: the comparators of the network for the next
// power of two, without those that touch a position >= n (as if padded with +inf there,
// which such comparators never move). Every coordinate goes through the same comparators,
// so each one is an elementwise min/max of two updates' rows: vectorised across coordinates,
// where a per-coordinate sort would gather n strided values and branch.
Network batcher(uint32_t n) {
  uint32_t size = 1;
  while (size < n) size <<= 1;
  Network net;
  for (uint32_t p = 1; p < size; p <<= 1)
    for (uint32_t k = p; k >= 1; k >>= 1)
      for (uint32_t j = k % p; j + k < size; j += 2 * k)
        for (uint32_t i = 0; i < std::min(k, size - j - k); ++i)
          if ((i + j) / (2 * p) == (i + j + k) / (2 * p) && i + j + k < n)
            net.emplace_back(i + j, i + j + k);
  return net;
}

const Network& networkFor(uint32_t n) {
  static std::mutex mutex;
  static std::map<uint32_t, Network> cache;
  std::lock_guard lock(mutex);
  auto it = cache.find(n);
  if (it == cache.end()) it = cache.emplace(n, batcher(n)).first;
  return it->second;
}

LIFL_CLONES void compareExchange(float* __restrict lo, float* __restrict hi, uint64_t m) {
  for (uint64_t j = 0; j < m; ++j) {
    const float a = lo[j], b = hi[j];
    lo[j] = a < b ? a : b;
    hi[j] = a < b ? b : a;
  }
}

// 16 independent partial sums: GCC vectorises them without reassociating a single sum
// (which it may not do without -ffast-math).
LIFL_CLONES double squaredDistance(const float* __restrict a, const float* __restrict b,
                                   uint64_t m) {
  float lanes[16] = {};
  uint64_t j = 0;
  for (; j + 16 <= m; j += 16)
    for (int l = 0; l < 16; ++l) {
      const float d = a[j + l] - b[j + l];
      lanes[l] += d * d;
    }
  double sum = 0;
  for (float lane : lanes) sum += lane;
  for (; j < m; ++j) sum += static_cast<double>(a[j] - b[j]) * (a[j] - b[j]);
  return sum;
}

LIFL_CLONES void addRow(double* __restrict sum, const float* __restrict row, uint64_t m) {
  for (uint64_t j = 0; j < m; ++j) sum[j] += row[j];
}

}  // namespace

void robustReduce(const Strategy& s, float* block, uint64_t n, uint64_t m, float* out) {
  for (const auto& [a, b] : networkFor(static_cast<uint32_t>(n)))
    compareExchange(block + a * m, block + b * m, m);  // each coordinate's column sorted
  if (s.kind == StrategyKind::Median) {                // numpy's: the two middle values averaged
    const float* upper = block + (n / 2) * m;
    const float* lower = block + ((n - 1) / 2) * m;
    for (uint64_t j = 0; j < m; ++j)
      out[j] = static_cast<float>((static_cast<double>(lower[j]) + upper[j]) / 2);
    return;
  }
  // trimmed_mean: int(beta * n) cut at each end, as scipy.stats.trim_mean
  const auto cut = static_cast<uint64_t>(s.beta * static_cast<double>(n));
  std::vector<double> sum(m, 0.0);
  for (uint64_t k = cut; k < n - cut; ++k) addRow(sum.data(), block + k * m, m);
  const double keep = static_cast<double>(n - 2 * cut);
  for (uint64_t j = 0; j < m; ++j) out[j] = static_cast<float>(sum[j] / keep);
}

void addSquaredDistances(const float* block, uint64_t n, uint64_t m, double* dist) {
  for (uint64_t a = 0; a < n; ++a)
    for (uint64_t b = a + 1; b < n; ++b) {
      const double d = squaredDistance(block + a * m, block + b * m, m);
      dist[a * n + b] += d;
      dist[b * n + a] += d;
    }
}

std::vector<uint32_t> krumSelect(const Strategy& s, const double* dist, uint64_t n) {
  const auto f = static_cast<uint64_t>(s.numMalicious);
  const uint64_t closest = n > f + 2 ? n - f - 2 : 1;
  std::vector<std::pair<double, uint32_t>> scores;
  std::vector<double> row;
  for (uint64_t i = 0; i < n; ++i) {
    row.clear();
    for (uint64_t j = 0; j < n; ++j)
      if (j != i) row.push_back(dist[i * n + j]);
    std::sort(row.begin(), row.end());
    double score = 0;
    for (uint64_t k = 0; k < std::min<uint64_t>(closest, row.size()); ++k) score += row[k];
    scores.emplace_back(score, static_cast<uint32_t>(i));
  }
  std::stable_sort(scores.begin(), scores.end());
  uint64_t keep = 1;
  if (s.kind == StrategyKind::MultiKrum) {
    keep = s.numToKeep > 0 ? static_cast<uint64_t>(s.numToKeep) : (n > f ? n - f : 1);
    keep = std::clamp<uint64_t>(keep, 1, n);
  }
  std::vector<uint32_t> out;
  for (uint64_t k = 0; k < keep; ++k) out.push_back(scores[k].second);
  return out;
}

}  // namespace lifl::kernels
