#include <cmath>
#include <cstdint>

#include "pick_tokens.h"

namespace lifl::gpu::cuda::llm {
namespace {

using kernels::llm::Pick;

constexpr unsigned kFullMask = 0xffffffffu;
constexpr uint32_t kThreads = 1024, kWarps = kThreads / 32;
constexpr uint32_t kBins = 256, kBinsPerLane = kBins / 32;

/// A key in the candidates' order: ascending keys are descending logits (-0 ties with +0, as
/// they compare on the CPU).
__device__ __forceinline__ uint32_t descendingKey(float v) {
  if (v == 0.f) v = 0.f;
  const uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? b : ~b & 0x7fffffffu;
}
__device__ __forceinline__ float logitOf(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? key : ~key & 0x7fffffffu);
}

struct Shared {
  uint32_t count[kBins];
  double mass[kBins];
  uint32_t keyLo[kBins], keyHi[kBins];  ///< the first pass's bins: their keys' range
  double warpMass[kWarps];
  uint32_t warpCount[kWarps];
  float warpBest[kWarps], warpWorst[kWarps];
  uint32_t warpAt[kWarps];
  // The selection in progress (selectKey): the bin chosen, the tokens in play with the key
  // (its last pass), the rank still to pass (by count) or the mass before the bin and the
  // mass to reach (by mass).
  uint32_t bin, ties, rank, chosen;
  double massAbove, target;
};

template <typename T>
struct Span {
  T before, end, total;
};

/// Where this thread's `mine` lies in the block's running sum in thread order: [before, end)
/// of total. The bounds come from the same sums as the neighbours' bounds, so that they tile
/// the total exactly.
template <typename T>
__device__ Span<T> scanThreads(T mine, T* warpSums) {
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T scan = mine;
  for (uint32_t off = 1; off < 32; off *= 2) {
    const T v = __shfl_up_sync(kFullMask, scan, off);
    if (lane >= off) scan += v;
  }
  __syncthreads();  // warpSums' earlier readers are done
  if (lane == 31) warpSums[warp] = scan;
  __syncthreads();
  if (threadIdx.x == 0)
    for (uint32_t w = 1; w < kWarps; ++w) warpSums[w] += warpSums[w - 1];
  __syncthreads();
  const T off = warp > 0 ? warpSums[warp - 1] : T{0};
  const T prev = __shfl_up_sync(kFullMask, scan, 1);
  return {off + (lane > 0 ? prev : T{0}), off + scan, warpSums[kWarps - 1]};
}

/// Warp 0, after a pass's histogram: the first bin, in key order, at which the running count
/// passes s.rank (kByMass: the running mass, after s.massAbove, reaches s.target; the first
/// pass sets the target to topP times the mass in play). Where rounding keeps the mass short
/// of it, the last bin with tokens. Leaves the bin, its count, and the rank left within it or
/// the mass before it.
template <bool kByMass>
__device__ void crossing(Shared& s, bool first, float topP) {
  const uint32_t lane = threadIdx.x;
  uint32_t c[kBinsPerLane], counted = 0;
  double m[kBinsPerLane], weighed = 0;
  for (uint32_t j = 0; j < kBinsPerLane; ++j) {
    c[j] = s.count[lane * kBinsPerLane + j];
    counted += c[j];
    m[j] = kByMass ? s.mass[lane * kBinsPerLane + j] : 0.0;
    weighed += m[j];
  }
  uint32_t countTo = counted;
  double massTo = weighed;
  for (uint32_t off = 1; off < 32; off *= 2) {
    const uint32_t cv = __shfl_up_sync(kFullMask, countTo, off);
    const double mv = __shfl_up_sync(kFullMask, massTo, off);
    if (lane >= off) {
      countTo += cv;
      massTo += mv;
    }
  }
  // Every lane shuffles (a lane left out would stall the warp); lane 0's own value is unused.
  const uint32_t countUp = __shfl_up_sync(kFullMask, countTo, 1);
  const double massUp = __shfl_up_sync(kFullMask, massTo, 1);
  const uint32_t countBefore = lane > 0 ? countUp : 0;
  const double massBefore = lane > 0 ? massUp : 0.0;
  const double target = first ? topP * __shfl_sync(kFullMask, massTo, 31) : s.target;
  const double above = first ? 0.0 : s.massAbove;
  const uint32_t rank = s.rank;
  const bool reached = kByMass ? above + massTo >= target : countTo > rank;
  const uint32_t reachedLanes = __ballot_sync(kFullMask, reached);
  const uint32_t filled = __ballot_sync(kFullMask, counted > 0);
  const uint32_t at = reachedLanes ? __ffs(reachedLanes) - 1 : 31 - __clz(filled);
  if (lane != at) return;
  double acc = above + massBefore, accAt = acc;
  uint32_t accCount = countBefore, accCountAt = accCount, chosen = 0;
  for (uint32_t j = 0; j < kBinsPerLane; ++j) {
    if (c[j] == 0) continue;
    chosen = j;
    accAt = acc;
    accCountAt = accCount;
    if (kByMass ? acc + m[j] >= target : accCount + c[j] > rank) break;
    acc += m[j];
    accCount += c[j];
  }
  s.bin = lane * kBinsPerLane + chosen;
  s.ties = c[chosen];
  s.rank = rank - accCountAt;
  s.massAbove = accAt;
  s.target = target;
}

/// Among the tokens in play, the key at which the running count in key order passes `rank`
/// (kByMass: the running mass reaches topP times the mass in play). The first pass bins the
/// logits linearly between the row's extremes (best, worst), so that they spread over the
/// bins; each later pass splits the chosen bin's keys 8 bits at a time. Leaves in s the ties
/// (tokens in play with that key), the rank left among them (by count) and the mass before
/// them (by mass).
template <bool kByMass, typename InPlay>
__device__ uint32_t selectKey(Shared& s, const float* row, uint32_t vocab, double top, float t,
                              float topP, float best, float worst, uint32_t rank, InPlay inPlay) {
  __syncthreads();  // s's earlier readers are done
  if (threadIdx.x == 0) s.rank = rank;
  const float scale = best > worst ? kBins / (best - worst) : 0.f;
  uint32_t lo = 0, shift = 0;
  uint64_t width = 0;
  for (uint32_t pass = 0;; ++pass) {
    for (uint32_t b = threadIdx.x; b < kBins; b += blockDim.x) {
      s.count[b] = 0;
      s.mass[b] = 0;
      s.keyLo[b] = UINT32_MAX;
      s.keyHi[b] = 0;
    }
    __syncthreads();
    for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float l = row[i];
      const uint32_t key = descendingKey(l);
      if (!inPlay(i, key)) continue;
      uint32_t b;
      if (pass == 0) {
        const float d = (best - l) * scale;
        b = d < kBins ? static_cast<uint32_t>(d) : kBins - 1;
      } else {
        if (key < lo || key - lo >= width) continue;
        b = (key - lo) >> shift;
      }
      atomicAdd(&s.count[b], 1u);
      if (kByMass) atomicAdd(&s.mass[b], exp((double{l} - top) / t));
      if (pass == 0) {
        atomicMin(&s.keyLo[b], key);
        atomicMax(&s.keyHi[b], key);
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) crossing<kByMass>(s, pass == 0, topP);
    __syncthreads();
    const uint32_t bin = s.bin;
    if (pass == 0) {
      lo = s.keyLo[bin];
      width = uint64_t{s.keyHi[bin] - lo} + 1;
    } else {
      lo += bin << shift;
      width = uint64_t{1} << shift;
    }
    if (width == 1) return lo;
    const uint32_t bits = 64 - __clzll(width - 1);
    shift = bits > 8 ? bits - 8 : 0;
    __syncthreads();  // every thread has read the bin before the next pass clears it
  }
}

/// Makes the first s.rank + 1 tokens in play with `key` (index order) the last ones in play.
template <typename InPlay>
__device__ void cutAt(Shared& s, const float* row, uint32_t vocab, uint32_t key, uint32_t& lastKey,
                      uint32_t& lastIndex, InPlay inPlay) {
  const uint32_t need = s.rank + 1, ties = s.ties;
  if (need < ties) {
    const uint32_t chunk = (vocab + kThreads - 1) / kThreads;
    const uint32_t lo = min(vocab, threadIdx.x * chunk), hi = min(vocab, lo + chunk);
    auto matches = [&](uint32_t i) {
      const uint32_t k = descendingKey(row[i]);
      return k == key && inPlay(i, k);
    };
    uint32_t mine = 0;
    for (uint32_t i = lo; i < hi; ++i) mine += matches(i);
    const Span<uint32_t> span = scanThreads(mine, s.warpCount);
    if (span.before < need && need <= span.end) {
      uint32_t seen = span.before;
      for (uint32_t i = lo; i < hi; ++i)
        if (matches(i) && ++seen == need) {
          s.chosen = i;  // one thread's chunk holds it: one writer
          break;
        }
    }
    __syncthreads();
    lastIndex = s.chosen;
  } else if (key != lastKey) {
    lastIndex = UINT32_MAX;  // every token with the key (else those in play already)
  }
  lastKey = key;
}

/// out[row] = kernels::llm::pickToken(logits row blockIdx.x, picks[row]). The maximum: each
/// thread the first of its stride, then the largest, ties to the lower index, across the
/// block. top_k and top_p: the last candidate in play found by selectKey (by count, then by
/// mass within those), never a sort. The draw: each thread sums the weights in play of a
/// contiguous chunk, a block-wide scan places u = draw x total in one chunk, whose thread
/// walks it. Sums in double.
__global__ void __launch_bounds__(kThreads)
    pickKernel(uint32_t* __restrict__ out, const float* __restrict__ logits, uint32_t vocab,
               const Pick* __restrict__ picks) {
  __shared__ Shared s;
  const float* row = logits + uint64_t{blockIdx.x} * vocab;
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float best = -INFINITY, worst = INFINITY;
  uint32_t at = UINT32_MAX;
  for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = row[i];
    if (at == UINT32_MAX || v > best) {
      best = v;
      at = i;
    }
    worst = fminf(worst, v);
  }
  auto better = [](float v, uint32_t i, float bestV, uint32_t bestI) {
    return bestI == UINT32_MAX || (i != UINT32_MAX && (v > bestV || (v == bestV && i < bestI)));
  };
  for (uint32_t off = 16; off > 0; off /= 2) {
    const float v = __shfl_xor_sync(kFullMask, best, off);
    const uint32_t i = __shfl_xor_sync(kFullMask, at, off);
    worst = fminf(worst, __shfl_xor_sync(kFullMask, worst, off));
    if (better(v, i, best, at)) {
      best = v;
      at = i;
    }
  }
  if (lane == 0) {
    s.warpBest[warp] = best;
    s.warpAt[warp] = at;
    s.warpWorst[warp] = worst;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (uint32_t w = 1; w < kWarps; ++w) {
      if (better(s.warpBest[w], s.warpAt[w], best, at)) {
        best = s.warpBest[w];
        at = s.warpAt[w];
      }
      worst = fminf(worst, s.warpWorst[w]);
    }
    s.warpBest[0] = best;
    s.warpWorst[0] = worst;
    s.chosen = at;
  }
  __syncthreads();
  const Pick p = picks[blockIdx.x];
  if (p.temperature <= 0.f) {
    if (threadIdx.x == 0) out[blockIdx.x] = s.chosen;
    return;
  }
  best = s.warpBest[0];
  worst = s.warpWorst[0];
  const double top = best;
  const float t = p.temperature;
  // In play: keys before lastKey, and lastKey's tokens up to lastIndex (all at first).
  uint32_t lastKey = UINT32_MAX, lastIndex = UINT32_MAX;
  auto inPlay = [&](uint32_t i, uint32_t key) {
    return key < lastKey || (key == lastKey && i <= lastIndex);
  };
  if (p.topK > 0 && p.topK < vocab) {
    const uint32_t key =
        selectKey<false>(s, row, vocab, top, t, 1.f, best, worst, p.topK - 1, inPlay);
    cutAt(s, row, vocab, key, lastKey, lastIndex, inPlay);
  }
  if (kernels::llm::hasNucleus(p.topP)) {
    const uint32_t key = selectKey<true>(s, row, vocab, top, t, p.topP, best, worst, 0, inPlay);
    if (threadIdx.x == 0) {  // how many of the key's tokens the nucleus needs, as the CPU adds
      const double w = exp((double{logitOf(key)} - top) / t);
      double acc = s.massAbove;
      uint32_t needed = 0;
      do {
        acc += w;
        ++needed;
      } while (acc < s.target && needed < s.ties);
      s.rank = needed - 1;
    }
    __syncthreads();
    cutAt(s, row, vocab, key, lastKey, lastIndex, inPlay);
  }
  __syncthreads();  // s.chosen is read; it is written below
  if (threadIdx.x == 0) s.chosen = UINT32_MAX;
  const uint32_t chunk = (vocab + kThreads - 1) / kThreads;
  const uint32_t lo = min(vocab, threadIdx.x * chunk), hi = min(vocab, lo + chunk);
  auto weight = [&](uint32_t i) {
    const float l = row[i];
    return inPlay(i, descendingKey(l)) ? exp((double{l} - top) / t) : 0.0;
  };
  double mine = 0;
  for (uint32_t i = lo; i < hi; ++i) mine += weight(i);
  const Span<double> span = scanThreads(mine, s.warpMass);
  const double u = p.draw * span.total;
  if (span.before <= u && u < span.end) {
    double acc = span.before;
    uint32_t last = lo;
    for (uint32_t i = lo; i < hi; ++i) {
      const double w = weight(i);
      if (w > 0) last = i;
      if ((acc += w) > u) {
        last = i;
        break;
      }
    }
    s.chosen = last;  // one chunk holds u: one writer
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t token = s.chosen;
    if (token == UINT32_MAX)  // u rounded up to the total: the last token in play
      for (token = vocab - 1; token > 0 && weight(token) == 0; --token) {
      }
    out[blockIdx.x] = token;
  }
}

}  // namespace

cudaError_t launchPickTokens(uint32_t* out, const float* logits, uint32_t rows, uint32_t vocab,
                             const Pick* picks, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  pickKernel<<<rows, kThreads, 0, stream>>>(out, logits, vocab, picks);
  return cudaGetLastError();
}

}  // namespace lifl::gpu::cuda::llm
