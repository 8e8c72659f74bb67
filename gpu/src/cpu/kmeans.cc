// k-means of KV retrieval's prompt keys (lifl/gpu/llm.h): the reference the CUDA kernels
// (src/cuda/kmeans.cu) follow, and the CPU path's own.
#include <algorithm>
#include <cmath>
#include <vector>

#include "lifl/common/clones.h"
#include "lifl/gpu/llm.h"

namespace lifl::kernels::llm {
namespace {

constexpr uint32_t kKeysAtOnce = 4;  ///< their score rows stay in L1 while a centroid row streams

/// The centroids nearest to `count` (<= kKeysAtOnce) keys by squared distance, ||c||^2 - 2 k.c
/// (a key's own norm is the same for every c): centroids transposed, [dim][clusters], so that
/// the inner loop runs over clusters in vector registers, each centroid row read once for all
/// the keys. Ties go to the lowest index. The FMAs are explicit and in ascending d, the order
/// the CUDA kernel follows: both give the same scores bit for bit, on every CPU.
LIFL_CLONES void nearestCentroids(const float* const* keys, uint32_t count,
                                  const float* __restrict__ transposed,
                                  const float* __restrict__ norms, float* __restrict__ scores,
                                  uint32_t clusters, uint32_t dim, uint32_t* out) {
  for (uint32_t j = 0; j < count; ++j)
    for (uint32_t c = 0; c < clusters; ++c) scores[j * clusters + c] = norms[c];
  for (uint32_t d = 0; d < dim; ++d) {
    const float* row = transposed + uint64_t{d} * clusters;
    for (uint32_t j = 0; j < count; ++j) {
      const float kd = -2.f * keys[j][d];
      float* __restrict__ score = scores + j * clusters;
      for (uint32_t c = 0; c < clusters; ++c) score[c] = std::fma(kd, row[c], score[c]);
    }
  }
  for (uint32_t j = 0; j < count; ++j) {
    const float* score = scores + j * clusters;
    uint32_t best = 0;
    for (uint32_t c = 1; c < clusters; ++c)
      if (score[c] < score[best]) best = c;
    out[j] = best;
  }
}

}  // namespace

void kmeans(const float* keys, uint32_t n, uint32_t kvHeads, uint32_t headDim, uint32_t clusters,
            uint32_t rounds, uint32_t* owner, float* centroids) {
  if (n == 0 || clusters == 0) return;
  const uint64_t rowFloats = uint64_t{kvHeads} * headDim;
  for (uint32_t kvh = 0; kvh < kvHeads; ++kvh) {
    auto key = [&](uint32_t i) { return keys + i * rowFloats + uint64_t{kvh} * headDim; };
    float* cent = centroids + uint64_t{kvh} * clusters * headDim;
    uint32_t* own = owner + uint64_t{kvh} * n;
    for (uint32_t c = 0; c < clusters; ++c)
      std::copy_n(key(static_cast<uint32_t>(uint64_t{c} * n / clusters)), headDim,
                  cent + uint64_t{c} * headDim);
    std::vector<float> transposed(uint64_t{headDim} * clusters), norms(clusters),
        scores(uint64_t{kKeysAtOnce} * clusters), sums(uint64_t{clusters} * headDim);
    std::vector<uint32_t> counts(clusters);
    for (uint32_t round = 0; round < rounds; ++round) {
      for (uint32_t c = 0; c < clusters; ++c) {
        norms[c] = 0;
        for (uint32_t d = 0; d < headDim; ++d) {
          const float v = cent[uint64_t{c} * headDim + d];
          transposed[uint64_t{d} * clusters + c] = v;
          norms[c] = std::fma(v, v, norms[c]);
        }
      }
      for (uint32_t i = 0; i < n; i += kKeysAtOnce) {
        const uint32_t count = std::min(kKeysAtOnce, n - i);
        const float* batch[kKeysAtOnce];
        for (uint32_t j = 0; j < count; ++j) batch[j] = key(i + j);
        nearestCentroids(batch, count, transposed.data(), norms.data(), scores.data(), clusters,
                         headDim, own + i);
      }
      // Each centroid the mean of its keys, summed in ascending order (the CUDA update sums
      // in the same order, so the same assignment gives the same centroids).
      std::fill(sums.begin(), sums.end(), 0.f);
      std::fill(counts.begin(), counts.end(), 0u);
      for (uint32_t i = 0; i < n; ++i) {
        const float* k = key(i);
        float* sum = sums.data() + uint64_t{own[i]} * headDim;
        for (uint32_t d = 0; d < headDim; ++d) sum[d] += k[d];
        counts[own[i]]++;
      }
      for (uint32_t c = 0; c < clusters; ++c)
        if (counts[c])
          for (uint32_t d = 0; d < headDim; ++d)
            cent[uint64_t{c} * headDim + d] =
                sums[uint64_t{c} * headDim + d] / static_cast<float>(counts[c]);
    }
  }
}

}  // namespace lifl::kernels::llm
