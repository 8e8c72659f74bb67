// KV retrieval's k-means (lifl/gpu/llm_device.h kmeans) on each backend against a
// double-precision reference written here, and the two backends against each other.
//
// Keys are noisy copies of a few directions per head, so most nearest centroids are clear;
// a key's centroid must be nearest within fp32 rounding of ||c||^2 - 2 k.c: kDistanceSlack
// times (||k||^2 + ||c||^2). Centroids are the mean of their keys within 1e-5 (norm-wise,
// relative). Between backends: the same owners and centroids bit for bit (the device does the
// reference's FMAs and sums in the reference's order), and the device is deterministic.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "lifl/gpu/llm_device.h"

namespace lifl::gpu::llm {
namespace {

constexpr double kDistanceSlack = 1e-5, kMeanTolerance = 1e-5;

struct Problem {
  uint32_t n, kvHeads, headDim, clusters;
  std::vector<float> keys;  // [n][kvHeads][headDim]
  const float* key(uint32_t i, uint32_t h) const {
    return keys.data() + (uint64_t{i} * kvHeads + h) * headDim;
  }
};

Problem makeProblem(uint32_t n, uint32_t kvHeads, uint32_t headDim, uint32_t clusters,
                    uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n01;
  const uint32_t topics = 24;
  std::vector<float> centre(uint64_t{kvHeads} * topics * headDim);
  for (auto& v : centre) v = n01(rng);
  Problem p{n, kvHeads, headDim, clusters, std::vector<float>(uint64_t{n} * kvHeads * headDim)};
  std::uniform_int_distribution<uint32_t> pick(0, topics - 1);
  for (uint32_t i = 0; i < n; ++i)
    for (uint32_t h = 0; h < kvHeads; ++h) {
      const uint32_t t = pick(rng);
      for (uint32_t d = 0; d < headDim; ++d)
        p.keys[(uint64_t{i} * kvHeads + h) * headDim + d] =
            centre[(uint64_t{h} * topics + t) * headDim + d] + 0.3f * n01(rng);
    }
  return p;
}

struct Clustering {
  std::vector<uint32_t> owner;
  std::vector<float> centroids;
};

Clustering run(Backend b, const Problem& p, uint32_t rounds) {
  Clustering c{std::vector<uint32_t>(uint64_t{p.kvHeads} * p.n, ~0u),
               std::vector<float>(uint64_t{p.kvHeads} * p.clusters * p.headDim, std::nanf(""))};
  auto done = kmeans(b, p.keys.data(), p.n, p.kvHeads, p.headDim, p.clusters, rounds,
                     c.owner.data(), c.centroids.data());
  EXPECT_TRUE(done.has_value()) << (done ? "" : done.error().detail);
  return c;
}

double squaredDistance(const float* a, const float* b, uint32_t dim) {
  double s = 0;
  for (uint32_t d = 0; d < dim; ++d) s += (double(a[d]) - b[d]) * (double(a[d]) - b[d]);
  return s;
}
double squaredNorm(const float* a, uint32_t dim) {
  double s = 0;
  for (uint32_t d = 0; d < dim; ++d) s += double(a[d]) * a[d];
  return s;
}

/// Every centroid with keys is their mean; one without is `fallback` (its seed after one
/// round). Returns the clustering's objective (sum of squared distances to the owner).
double checkMeans(const Problem& p, const Clustering& c, const std::vector<float>* fallback) {
  double objective = 0;
  for (uint32_t h = 0; h < p.kvHeads; ++h) {
    std::vector<double> sums(uint64_t{p.clusters} * p.headDim, 0.0);
    std::vector<uint32_t> counts(p.clusters, 0);
    for (uint32_t i = 0; i < p.n; ++i) {
      const uint32_t o = c.owner[uint64_t{h} * p.n + i];
      EXPECT_LT(o, p.clusters);
      if (o >= p.clusters) return INFINITY;
      counts[o]++;
      for (uint32_t d = 0; d < p.headDim; ++d) sums[uint64_t{o} * p.headDim + d] += p.key(i, h)[d];
    }
    for (uint32_t k = 0; k < p.clusters; ++k) {
      const float* got = c.centroids.data() + (uint64_t{h} * p.clusters + k) * p.headDim;
      double err = 0, norm = 0;
      for (uint32_t d = 0; d < p.headDim; ++d) {
        const double want =
            counts[k]
                ? sums[uint64_t{k} * p.headDim + d] / counts[k]
                : (fallback ? (*fallback)[(uint64_t{h} * p.clusters + k) * p.headDim + d] : got[d]);
        err += (got[d] - want) * (got[d] - want);
        norm += want * want;
      }
      EXPECT_LE(std::sqrt(err / std::max(norm, 1e-300)), kMeanTolerance)
          << "head " << h << " centroid " << k << " (" << counts[k] << " keys)";
    }
    for (uint32_t i = 0; i < p.n; ++i)
      objective += squaredDistance(
          p.key(i, h),
          c.centroids.data() +
              (uint64_t{h} * p.clusters + c.owner[uint64_t{h} * p.n + i]) * p.headDim,
          p.headDim);
  }
  return objective;
}

class Kmeans : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    if (GetParam() == Backend::Cuda && !cudaInfo().usable)
      GTEST_SKIP() << "SKIPPED: no CUDA device here (" << cudaInfo().why
                   << "); run on the GPU machine";
  }
};

TEST_P(Kmeans, OneRoundAssignsNearestSeedAndAverages) {
  // 100 clusters: not a multiple of the device's tile of 32; head dims of both kernels' kinds.
  for (uint32_t headDim : {64u, 128u, 48u}) {
    const Problem p = makeProblem(1500, 2, headDim, 100, 7 + headDim);
    std::vector<float> seeds(uint64_t{p.kvHeads} * p.clusters * headDim);
    for (uint32_t h = 0; h < p.kvHeads; ++h)
      for (uint32_t k = 0; k < p.clusters; ++k)
        std::memcpy(&seeds[(uint64_t{h} * p.clusters + k) * headDim],
                    p.key(static_cast<uint32_t>(uint64_t{k} * p.n / p.clusters), h), headDim * 4);
    const Clustering c = run(GetParam(), p, 1);
    uint32_t clear = 0;
    for (uint32_t h = 0; h < p.kvHeads; ++h)
      for (uint32_t i = 0; i < p.n; ++i) {
        std::vector<double> dist(p.clusters);
        for (uint32_t k = 0; k < p.clusters; ++k)
          dist[k] = squaredDistance(p.key(i, h), &seeds[(uint64_t{h} * p.clusters + k) * headDim],
                                    headDim);
        const auto best =
            static_cast<uint32_t>(std::min_element(dist.begin(), dist.end()) - dist.begin());
        const uint32_t got = c.owner[uint64_t{h} * p.n + i];
        ASSERT_LT(got, p.clusters);
        const double slack =
            kDistanceSlack *
            (squaredNorm(p.key(i, h), headDim) +
             squaredNorm(&seeds[(uint64_t{h} * p.clusters + got) * headDim], headDim));
        EXPECT_LE(dist[got], dist[best] + slack) << "head " << h << " key " << i;
        std::vector<double> sorted = dist;
        std::nth_element(sorted.begin(), sorted.begin() + 1, sorted.end());
        if (sorted[1] - sorted[0] > 2 * slack) {  // a clear nearest: it must be that one
          EXPECT_EQ(got, best) << "head " << h << " key " << i;
          clear++;
        }
      }
    EXPECT_GT(clear, p.n);  // most keys have a clear nearest seed: the check above ran
    checkMeans(p, c, &seeds);
  }
}

TEST_P(Kmeans, MoreRoundsLowerTheObjective) {
  const Problem p = makeProblem(2000, 3, 64, 125, 11);
  const double one = checkMeans(p, run(GetParam(), p, 1), nullptr);
  const double four = checkMeans(p, run(GetParam(), p, 4), nullptr);
  EXPECT_LT(four, one);  // Lloyd's rounds never raise it; on this data they lower it
}

TEST_P(Kmeans, EmptyInputsAndMoreClustersThanKeys) {
  const Problem p = makeProblem(10, 1, 64, 16, 3);  // clusters 16 > keys 10: seeds repeat
  const Clustering c = run(GetParam(), p, 2);
  checkMeans(p, c, nullptr);
  std::vector<uint32_t> owner(1, 7);
  std::vector<float> cent(64, 1.f);
  ASSERT_TRUE(kmeans(GetParam(), p.keys.data(), 0, 1, 64, 4, 4, owner.data(), cent.data()));
  EXPECT_EQ(owner[0], 7u);  // nothing to cluster: nothing written
}

INSTANTIATE_TEST_SUITE_P(Backends, Kmeans, ::testing::Values(Backend::Cpu, Backend::Cuda),
                         [](const auto& info) { return std::string(backendName(info.param)); });

TEST(KmeansBackends, DeviceMatchesCpu) {
  if (!cudaInfo().usable)
    GTEST_SKIP() << "SKIPPED: no CUDA device here (" << cudaInfo().why
                 << "); run on the GPU machine";
  for (uint32_t headDim : {64u, 128u}) {
    const Problem p = makeProblem(4000, 2, headDim, 250, 5);
    const Clustering cpu = run(Backend::Cpu, p, 4), gpu = run(Backend::Cuda, p, 4),
                     again = run(Backend::Cuda, p, 4);
    EXPECT_EQ(gpu.owner, again.owner);  // deterministic
    EXPECT_EQ(0,
              std::memcmp(gpu.centroids.data(), again.centroids.data(), gpu.centroids.size() * 4));
    // The device does the reference's arithmetic in its order: the same clustering exactly.
    EXPECT_EQ(gpu.owner, cpu.owner);
    EXPECT_EQ(0, std::memcmp(gpu.centroids.data(), cpu.centroids.data(), gpu.centroids.size() * 4));
  }
}

}  // namespace
}  // namespace lifl::gpu::llm
