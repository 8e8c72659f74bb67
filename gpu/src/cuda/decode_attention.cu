// Decode attention over the paged KV cache (decode_attention.h). Two split kernels: the
// half-warp kernel for head dims that are multiples of 64 (every Llama shape up to a group of
// 8 x 64 or 4 x 128 dims), and the warp kernel for the rest.
#include <cuda_runtime.h>

#include <cmath>

#include "cuda_check.h"
#include "decode_attention.h"

namespace lifl::gpu::cuda::llm {
namespace {

constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float warpSum(float v) {
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(kFull, v, off);
  return v;
}
__device__ __forceinline__ float warpMax(float v) {
  for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(kFull, v, off));
  return v;
}

/// The block's STREAMS online-softmax states (shared memory: running max m[s][g], sum
/// l[s][g], unnormalised output o[(s * G + g) * hd + d]) combined into the split's partial of
/// each of the G query heads: o, then m in natural-log units, then l. `dst` is the partial
/// of head 0 of the group; head g's is g * splits partials further. LOG2: m is in log2 units.
template <int STREAMS, int G, bool LOG2>
__device__ void writeBlockPartial(float* __restrict__ dst, const float (&m)[STREAMS][G],
                                  const float (&l)[STREAMS][G], const float* o, uint32_t hd,
                                  uint32_t splits) {
  const uint32_t outDims = hd + 2;  // o[hd], m, l
  for (uint32_t i = threadIdx.x; i < G * hd; i += blockDim.x) {
    const uint32_t g = i / hd, d = i % hd;
    float M = -INFINITY;
    for (int s = 0; s < STREAMS; ++s) M = fmaxf(M, m[s][g]);
    float L = 0, O = 0;
    for (int s = 0; s < STREAMS; ++s) {
      const float f =
          m[s][g] == -INFINITY ? 0.f : (LOG2 ? exp2f(m[s][g] - M) : __expf(m[s][g] - M));
      L += l[s][g] * f;
      O += o[(s * G + g) * hd + d] * f;
    }
    float* head = dst + uint64_t{g} * splits * outDims;
    head[d] = O;
    if (d == 0) {
      head[hd] = LOG2 ? M * 0.6931471805599453f : M;  // the merge works in natural-log units
      head[hd + 1] = L;
    }
  }
}

// Paged causal GQA attention, split over the context (Flash-Decoding): one block per (row,
// KV head, split of splitTokensFor(context) positions) computes, for every query head of that KV
// head's group, the split's running max m, sum l and unnormalised output o (online softmax, one
// warp per token stride); splitMerge then combines the splits by their log-sum-exp. Each
// K/V row is read once for the whole group, whatever the context length.
constexpr int kWarps = 4;

// GROUP and DL are template parameters so that the per-head arrays stay in registers (a
// runtime index would put them in local memory).
template <int GROUP, int DL, typename T>
__global__ void __launch_bounds__(kWarps * 32)
    splitAttentionKernel(float* __restrict__ partial, const float* __restrict__ q,
                         const uint32_t* __restrict__ positions,
                         const uint32_t* __restrict__ tables, const uint32_t* __restrict__ rowTable,
                         uint32_t heads, uint32_t kvHeads, uint32_t headDim, uint32_t splits,
                         uint32_t splitTokens, const T* __restrict__ kPages,
                         const T* __restrict__ vPages, const uint32_t* __restrict__ headLengths) {
  const uint32_t row = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  constexpr uint32_t group = GROUP;
  const uint32_t context = headLengths ? headLengths[row * kvHeads + kvh] : positions[row] + 1;
  const uint32_t begin = split * splitTokens, end = min(context, begin + splitTokens);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const uint32_t* table = tables + rowTable[row];
  const float scale = rsqrtf(static_cast<float>(headDim));
  float qv[GROUP][DL], acc[GROUP][DL], m[GROUP], l[GROUP];
#pragma unroll
  for (uint32_t g = 0; g < group; ++g) {
    const float* qh = q + (uint64_t{row} * heads + kvh * group + g) * headDim;
#pragma unroll
    for (int j = 0; j < DL; ++j) {
      qv[g][j] = qh[j * 32 + lane] * scale;
      acc[g][j] = 0.f;
    }
    m[g] = -INFINITY;
    l[g] = 0.f;
  }
  // kUnroll tokens per warp per step, their K/V rows loaded before any is used: more loads
  // in flight per warp (the step is otherwise a chain of dependent reductions).
  constexpr int kUnroll = 4;
  for (uint32_t t0 = begin + warp; t0 < end; t0 += kWarps * kUnroll) {
    float kr[kUnroll][DL], vr[kUnroll][DL];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t t = t0 + u * kWarps;
      if (t >= end) break;
      const uint64_t at = kvRowAt(table[t / kPageTokens], t % kPageTokens, kvh, kvHeads, headDim);
#pragma unroll
      for (int j = 0; j < DL; ++j) {
        kr[u][j] = kvToFloat(kPages[at + j * 32 + lane]);
        vr[u][j] = kvToFloat(vPages[at + j * 32 + lane]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (t0 + u * kWarps >= end) break;
#pragma unroll
      for (uint32_t g = 0; g < group; ++g) {
        float s = 0;
#pragma unroll
        for (int j = 0; j < DL; ++j) s += qv[g][j] * kr[u][j];
        s = warpSum(s);
        const float mNew = fmaxf(m[g], s), correction = __expf(m[g] - mNew), p = __expf(s - mNew);
        l[g] = l[g] * correction + p;
#pragma unroll
        for (int j = 0; j < DL; ++j) acc[g][j] = acc[g][j] * correction + p * vr[u][j];
        m[g] = mNew;
      }
    }
  }
  // The block's warps combined in shared memory, then one partial per (head, split).
  __shared__ float sm[kWarps][GROUP], sl[kWarps][GROUP];
  __shared__ float so[kWarps][GROUP][DL * 32];
#pragma unroll
  for (uint32_t g = 0; g < group; ++g) {
    if (lane == 0) {
      sm[warp][g] = m[g];
      sl[warp][g] = l[g];
    }
#pragma unroll
    for (int j = 0; j < DL; ++j) so[warp][g][j * 32 + lane] = acc[g][j];
  }
  __syncthreads();
  writeBlockPartial<kWarps, GROUP, false>(
      partial + ((uint64_t{row} * heads + kvh * group) * splits + split) * (headDim + 2), sm, sl,
      &so[0][0][0], headDim, splits);
}

__global__ void splitMergeKernel(float* __restrict__ out, const float* __restrict__ partial,
                                 const uint32_t* __restrict__ positions, uint32_t heads,
                                 uint32_t headDim, uint32_t splits, uint32_t splitTokens,
                                 const uint32_t* __restrict__ headLengths, uint32_t kvHeads) {
  const uint32_t row = blockIdx.x, h = blockIdx.y;
  const uint32_t context =
      headLengths ? headLengths[row * kvHeads + h / (heads / kvHeads)] : positions[row] + 1;
  const uint32_t used = (context + splitTokens - 1) / splitTokens;  // splits with tokens
  const uint32_t outDims = headDim + 2;
  const float* p = partial + (uint64_t{row} * heads + h) * splits * outDims;
  float M = -INFINITY;
  for (uint32_t s = 0; s < used; ++s) M = fmaxf(M, p[s * outDims + headDim]);
  for (uint32_t d = threadIdx.x; d < headDim; d += blockDim.x) {
    float L = 0, O = 0;
    for (uint32_t s = 0; s < used; ++s) {
      const float mi = p[s * outDims + headDim];
      const float f = mi == -INFINITY ? 0.f : __expf(mi - M);
      L += p[s * outDims + headDim + 1] * f;
      O += p[s * outDims + d] * f;
    }
    out[(uint64_t{row} * heads + h) * headDim + d] = O / L;
  }
}

// The half-warp kernel. Each half-warp takes one token at a time, its 16 lanes holding 4 * V4
// dims of the K and V rows (16-byte loads of fp32 pages, 8-byte of BF16, widened to fp32 where
// used); a warp so reads two rows per load, U pairs in
// flight. The G dot products of a token are summed over the half-warp by transposeSum: each
// exchange halves the values a lane carries, so that G sums cost log2(G) + 4 exchange steps
// instead of 4 * G, and leave each lane with the score of one query head (headOf), whose
// online softmax it keeps. The U scores of a half-warp are folded into the softmax at once
// (one rescale per U tokens), then each head's weights are broadcast for the V update.
// Scores are in log2 units (q pre-scaled by log2 e), so the exponentials are exp2. By count,
// about a third of the warp kernel's instructions per token; the last block of each
// (row, KV head) merges the splits, so no merge kernel is launched (docs/benchmarks.md).
constexpr uint32_t kMaxSplitPages = 512 / kPageTokens;
/// Multiprocessors of the device the process uses (one a process).
unsigned multiprocessors() {
  static const unsigned count = [] {
    int device = 0, n = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0)
      return 132u;  // an H100's
    return static_cast<unsigned>(n);
  }();
  return count;
}

/// Splits merged inside the kernel; beyond (contexts over 128K), splitMergeKernel merges.
constexpr uint32_t kMaxFusedSplits = 256;

template <int G, int OFF, int N>
__device__ __forceinline__ void transposeSumStep(float (&v)[G], int lane) {
  if constexpr (OFF >= 1) {
    if constexpr (N > 1) {
      const bool upper = (lane & OFF) != 0;
#pragma unroll
      for (int i = 0; i < N / 2; ++i) {
        const float send = upper ? v[i] : v[i + N / 2];
        const float keep = upper ? v[i + N / 2] : v[i];
        v[i] = keep + __shfl_xor_sync(kFull, send, OFF);
      }
      transposeSumStep<G, OFF / 2, N / 2>(v, lane);
    } else {
      v[0] += __shfl_xor_sync(kFull, v[0], OFF);
      transposeSumStep<G, OFF / 2, 1>(v, lane);
    }
  }
}

template <int G>
inline constexpr int kLog2 = G == 1   ? 0
                             : G == 2 ? 1
                             : G == 4 ? 2
                                      : 3;

/// The query head (of G) whose sum transposeSum leaves in this lane of a half-warp.
template <int G>
__device__ __forceinline__ int headOf(int lane) {
  return (lane & 15) >> (4 - kLog2<G>);
}

/// v[g] summed over the 16 lanes of the half-warp; returns the sum for headOf(lane).
template <int G>
__device__ __forceinline__ float transposeSum(float (&v)[G], int lane) {
  transposeSumStep<G, 8, G>(v, lane);
  return v[0];
}

__device__ __forceinline__ float dot4(float4 a, float4 b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}
__device__ __forceinline__ void rescale(float4& acc, float c) {
  acc.x *= c;
  acc.y *= c;
  acc.z *= c;
  acc.w *= c;
}
__device__ __forceinline__ void addScaled(float4& acc, float p, float4 v) {
  acc.x += p * v.x;
  acc.y += p * v.y;
  acc.z += p * v.z;
  acc.w += p * v.w;
}

/// Four elements of a K/V row. BF16 rows are read as streaming loads (evicted first: each is
/// read once), which took BF16 at batch 8 and 4K from 61.4% to 64.6% of the bandwidth with
/// head-major pages; fp32 rows lost up to a point with them, and are read as before.
template <typename T>
__device__ __forceinline__ KvRaw4<T> loadRow(const T* p) {
  const auto* raw = reinterpret_cast<const KvRaw4<T>*>(p);
  if constexpr (sizeof(T) == 2)
    return __ldcs(raw);
  else
    return *raw;
}

/// Token pairs per warp in flight, measured best of 2, 4 and 8 (docs/benchmarks.md): 2 for
/// fp32 pages, 4 for BF16 (as many bytes in flight, in the same registers).
template <typename T>
constexpr int kUnrollFor = sizeof(T) == 4 ? 2 : 4;
/// Blocks of W warps an SM must hold, which caps the registers: for 4 warps, 8 (64
/// registers) where the q, output and K/V registers of a lane fit in 48 floats, so that a
/// batch of 8 at 4K runs in one wave; fewer for wider shapes, which would spill at 64.
/// A token pair's K/V take 8 registers a 64 dims in fp32, 4 in BF16 (bytes: element size).
constexpr int minBlocksFor(int g, int v4, int u, int w, int bytes) {
  const int floats = g * v4 * 8 + u * v4 * 2 * bytes;
  const int ofFour = floats <= 48 ? 8 : floats <= 64 ? 6 : floats <= 96 ? 4 : 3;
  return ofFour * 4 / w > 0 ? ofFour * 4 / w : 1;
}

template <int G, int V4, int U, int W, int MINB, typename T>
__global__ void __launch_bounds__(W * 32, MINB)
    halfWarpAttentionKernel(float* __restrict__ out, uint32_t* __restrict__ arrivals,
                            float* __restrict__ partial, const float* __restrict__ q,
                            const uint32_t* __restrict__ positions,
                            const uint32_t* __restrict__ tables,
                            const uint32_t* __restrict__ rowTable, uint32_t heads, uint32_t kvHeads,
                            uint32_t splits, uint32_t splitTokens, const T* __restrict__ kPages,
                            const T* __restrict__ vPages,
                            const uint32_t* __restrict__ headLengths) {
  constexpr int HD = V4 * 64, STREAMS = W * 2;
  const uint32_t row = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const uint32_t context = headLengths ? headLengths[row * kvHeads + kvh] : positions[row] + 1;
  const uint32_t begin = split * splitTokens, end = min(context, begin + splitTokens);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, half = lane / 16, hl = lane % 16;
  const int mine = headOf<G>(lane);

  // The split's pages, so that a row's address does not wait on a block-table load. The
  // tables, positions and lengths are copied from the host before the step's kernels run, so
  // this prologue may overlap the kernel before (launchDependent); q and the pages may not.
  __shared__ uint32_t pageOf[kMaxSplitPages];
  const uint32_t* table = tables + rowTable[row];
  const uint32_t firstPage = begin / kPageTokens;
  const uint32_t pageCount = end > begin ? (end - 1) / kPageTokens - firstPage + 1 : 0;
  for (uint32_t i = threadIdx.x; i < pageCount; i += blockDim.x) pageOf[i] = table[firstPage + i];
  __syncthreads();

  // Rows [lo, hi) of the U token pairs from tw into kr, vr (the others left as they are).
  // The head's offset apart from the row's, so that a row's address is one multiply-add.
  const uint64_t headAt = kvRowAt(0, 0, kvh, kvHeads, HD) + hl * 4;
  const T* kLane = kPages + headAt;
  const T* vLane = vPages + headAt;
  using Raw = KvRaw4<T>;  // held as loaded, widened where used
  Raw kr[U][V4], vr[U][V4];
  auto load = [&](uint32_t tw, uint32_t lo, uint32_t hi) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint32_t t = tw + u * W * 2 + half;
      if (t < lo || t >= hi) continue;
      const uint64_t at =
          kvRowAt(pageOf[t / kPageTokens - firstPage], t % kPageTokens, 0, kvHeads, HD);
#pragma unroll
      for (int j = 0; j < V4; ++j) {
        kr[u][j] = loadRow<T>(kLane + at + j * 64);
        vr[u][j] = loadRow<T>(vLane + at + j * 64);
      }
    }
  };
  auto clear = [&] {
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int j = 0; j < V4; ++j) kr[u][j] = vr[u][j] = Raw{};  // zero bits: 0.0
  };
  // The first rows stream in while the kernel before finishes, except the newest position,
  // which the step's KV store writes (and a working set of retrieved rows, copied in the
  // step).
  const uint32_t tw0 = begin + warp * 2;
  const uint32_t settled = headLengths ? begin : min(end, context - 1);
  clear();
  load(tw0, begin, settled);
  afterPrerequisites();
  load(tw0, settled, end);

  const float scale = rsqrtf(static_cast<float>(HD)) * 1.4426950408889634f;  // log2 e
  float4 qv[G][V4], acc[G][V4];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const float4* qh =
        reinterpret_cast<const float4*>(q + (uint64_t{row} * heads + kvh * G + g) * HD);
#pragma unroll
    for (int j = 0; j < V4; ++j) {
      const float4 x = qh[j * 16 + hl];
      qv[g][j] = make_float4(x.x * scale, x.y * scale, x.z * scale, x.w * scale);
      acc[g][j] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
  float m = -INFINITY, l = 0.f;  // of head `mine`, over this half-warp's tokens
  auto attend = [&](uint32_t tw) {
    bool valid[U];
#pragma unroll
    for (int u = 0; u < U; ++u) valid[u] = tw + u * W * 2 + half < end;
    float s[U];
    float mNew = m;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float part[G];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        part[g] = 0.f;
#pragma unroll
        for (int j = 0; j < V4; ++j) part[g] += dot4(qv[g][j], widen(kr[u][j]));
      }
      const float sum = transposeSum<G>(part, lane);  // by every lane: it exchanges
      s[u] = valid[u] ? sum : -INFINITY;
      mNew = fmaxf(mNew, s[u]);
    }
    const bool any = mNew != -INFINITY;
    const float corr = any ? exp2f(m - mNew) : 1.f;
    float p[U];
    l *= corr;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      p[u] = any ? exp2f(s[u] - mNew) : 0.f;
      l += p[u];
    }
    m = mNew;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int src = (lane & 16) | (g << (4 - kLog2<G>));
      const float c = __shfl_sync(kFull, corr, src);
#pragma unroll
      for (int j = 0; j < V4; ++j) rescale(acc[g][j], c);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float pg = __shfl_sync(kFull, p[u], src);
#pragma unroll
        for (int j = 0; j < V4; ++j) addScaled(acc[g][j], pg, widen(vr[u][j]));
      }
    }
  };
  // The first pass apart from the loop, so that its rows need not live across it.
  if (tw0 < end) attend(tw0);
  for (uint32_t tw = tw0 + W * 2 * U; tw < end; tw += W * 2 * U) {
    clear();
    load(tw, begin, end);
    attend(tw);
  }
  // The block's 2 * W streams combined in shared memory, then one partial per head.
  __shared__ float sm[STREAMS][G], sl[STREAMS][G];
  __shared__ float4 so[STREAMS][G][HD / 4];
  const int stream = warp * 2 + half;
  if ((hl & ((16 >> kLog2<G>)-1)) == 0) {
    sm[stream][mine] = m;
    sl[stream][mine] = l;
  }
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int j = 0; j < V4; ++j) so[stream][g][j * 16 + hl] = acc[g][j];
  __syncthreads();
  const uint32_t outDims = HD + 2;  // o[HD], m, l
  writeBlockPartial<STREAMS, G, true>(
      partial + ((uint64_t{row} * heads + kvh * G) * splits + split) * outDims, sm, sl,
      reinterpret_cast<const float*>(so), HD, splits);
  if (!out) return;  // splitMergeKernel merges
  // The last block of the (row, KV head) to finish merges its splits, saving the merge
  // kernel's launch: the partials are published (fence) before the arrival is counted.
  __threadfence();
  __syncthreads();
  __shared__ bool lastToArrive;
  if (threadIdx.x == 0) {
    uint32_t* arrived = arrivals + row * kvHeads + kvh;
    lastToArrive = atomicAdd(arrived, 1) == splits - 1;
    if (lastToArrive) *arrived = 0;  // ready for the next launch
  }
  __syncthreads();
  if (!lastToArrive) return;
  __threadfence();
  const uint32_t used = (context + splitTokens - 1) / splitTokens;  // splits with tokens
  __shared__ float weight[G][kMaxFusedSplits];
  const float* mine0 = partial + (uint64_t{row} * heads + kvh * G) * splits * outDims;
  for (int g = warp; g < G; g += W) {
    const float* p = mine0 + static_cast<uint64_t>(g) * splits * outDims;
    float M = -INFINITY;
    for (uint32_t sp = lane; sp < used; sp += 32) M = fmaxf(M, __ldcg(p + sp * outDims + HD));
    M = warpMax(M);
    float L = 0.f;
    for (uint32_t sp = lane; sp < used; sp += 32) {
      const float mi = __ldcg(p + sp * outDims + HD);
      const float f = mi == -INFINITY ? 0.f : __expf(mi - M);
      weight[g][sp] = f;
      L += f * __ldcg(p + sp * outDims + HD + 1);
    }
    L = warpSum(L);
    for (uint32_t sp = lane; sp < used; sp += 32) weight[g][sp] /= L;
  }
  __syncthreads();
  for (uint32_t i = threadIdx.x; i < G * HD; i += blockDim.x) {
    const uint32_t g = i / HD, d = i % HD;
    const float* p = mine0 + uint64_t{g} * splits * outDims + d;
    float o = 0.f;
    for (uint32_t sp = 0; sp < used; ++sp) o += weight[g][sp] * __ldcg(p + sp * outDims);
    out[(uint64_t{row} * heads + kvh * G + g) * HD + d] = o;
  }
}

template <typename T>
std::string decodeAttentionAs(float* out, float* partial, uint32_t* arrivals, const float* q,
                              uint32_t rows, const uint32_t* positions, const uint32_t* tables,
                              const uint32_t* rowTable, uint32_t maxContext, uint32_t heads,
                              uint32_t kvHeads, uint32_t headDim, const T* kPages, const T* vPages,
                              const uint32_t* headLengths) {
  constexpr int kUnroll = kUnrollFor<T>, kBytes = sizeof(T);
  const uint32_t group = heads / kvHeads, lanes = headDim / 32, v4 = headDim / 64;
  const bool halfWarp = headDim % 64 == 0 && group * v4 <= 8;
  // The block's width and split: blocks of 8 warps where they fit in one wave of the GPU
  // (with splits of 256 positions, or 512), else of 4 warps, with splits twice as long where
  // that makes one wave and the shorter ones do not. Fewer, wider blocks merge fewer partials
  // and keep more warps in flight where there are few blocks; many blocks want more of them
  // per SM (H100, docs/benchmarks.md: batch 8 at 1K 52.8% -> 73.5%, at 4K 79.5% -> 81.2%;
  // batch 16 at 4K 82.5% -> 85.3% with the longer splits). Splits are never shorter than
  // splitTokensFor's, so the partials sized by it hold them.
  uint32_t splitTokens = splitTokensFor(maxContext);
  int width = 4;
  if (halfWarp) {
    auto blocksAt = [&](uint32_t tokens) {
      return uint64_t{rows} * kvHeads * ((maxContext + tokens - 1) / tokens);
    };
    auto wave = [&](int w) {
      return uint64_t{multiprocessors()} * minBlocksFor(group, v4, kUnroll, w, kBytes);
    };
    const uint32_t longest = kMaxSplitPages * kPageTokens;
    if (blocksAt(splitTokens) <= wave(8)) {
      width = 8;
    } else if (2 * splitTokens <= longest && blocksAt(2 * splitTokens) <= wave(8)) {
      width = 8;
      splitTokens *= 2;
    } else if (2 * splitTokens <= longest && blocksAt(splitTokens) > wave(4) &&
               blocksAt(2 * splitTokens) <= wave(4)) {
      splitTokens *= 2;
    }
  }
  const uint32_t splits = (maxContext + splitTokens - 1) / splitTokens;
  const dim3 blocks(rows, kvHeads, splits);
  bool launched = false, merged = false;
  float* fusedOut = splits <= kMaxFusedSplits ? out : nullptr;
  // Launched early at every length: since the first rows load before the wait, 1K gains too
  // (batch 8: 51.5% -> 53.3%; it lost 8 points when the early launch only read the page
  // table).
#define LIFL_HALF_W(G, V4, W)                                                                      \
  LIFL_CU(launchDependent(                                                                         \
      halfWarpAttentionKernel<G, V4, kUnroll, W, minBlocksFor(G, V4, kUnroll, W, kBytes), T>,      \
      blocks, W * 32, fusedOut, arrivals, partial, q, positions, tables, rowTable, heads, kvHeads, \
      splits, splitTokens, kPages, vPages, headLengths))
#define LIFL_HALF(G, V4)                                 \
  if (!launched && halfWarp && group == G && v4 == V4) { \
    if (width == 8)                                      \
      LIFL_HALF_W(G, V4, 8);                             \
    else                                                 \
      LIFL_HALF_W(G, V4, 4);                             \
    launched = true;                                     \
    merged = fusedOut != nullptr;                        \
  }
  LIFL_HALF(1, 1)
  LIFL_HALF(1, 2)
  LIFL_HALF(1, 4)
  LIFL_HALF(2, 1)
  LIFL_HALF(2, 2)
  LIFL_HALF(2, 4)
  LIFL_HALF(4, 1)
  LIFL_HALF(4, 2)
  LIFL_HALF(8, 1)
#undef LIFL_HALF_W
#undef LIFL_HALF
#define LIFL_SPLIT(G, DL)                                                                      \
  if (!launched && group == G && lanes == DL) {                                                \
    splitAttentionKernel<G, DL, T><<<blocks, kWarps * 32, 0, currentStream()>>>(               \
        partial, q, positions, tables, rowTable, heads, kvHeads, headDim, splits, splitTokens, \
        kPages, vPages, headLengths);                                                          \
    launched = true;                                                                           \
  }
#define LIFL_SPLIT_DIMS(G) \
  LIFL_SPLIT(G, 1) LIFL_SPLIT(G, 2) LIFL_SPLIT(G, 3) LIFL_SPLIT(G, 4) LIFL_SPLIT(G, 8)
  LIFL_SPLIT_DIMS(1)
  LIFL_SPLIT_DIMS(2)
  LIFL_SPLIT_DIMS(4)
  LIFL_SPLIT_DIMS(8)
#undef LIFL_SPLIT_DIMS
#undef LIFL_SPLIT
  if (!launched)
    return "attention: needs head_dim 32, 64, 96, 128 or 256 and 1, 2, 4 "
           "or 8 query heads per "
           "KV head";
  if (!merged)
    splitMergeKernel<<<dim3(rows, heads), 128, 0, currentStream()>>>(
        out, partial, positions, heads, headDim, splits, splitTokens, headLengths, kvHeads);
  LIFL_CU(cudaGetLastError());
  return "";
}

}  // namespace

std::string splitDecodeAttention(float* out, float* partial, uint32_t* arrivals, const float* q,
                                 uint32_t rows, const uint32_t* positions, const uint32_t* tables,
                                 const uint32_t* rowTable, uint32_t maxContext, uint32_t heads,
                                 uint32_t kvHeads, uint32_t headDim, const KvRef& kv,
                                 const uint32_t* headLengths) {
  return withKv(kv, [&](const auto* k, const auto* v) {
    return decodeAttentionAs(out, partial, arrivals, q, rows, positions, tables, rowTable,
                             maxContext, heads, kvHeads, headDim, k, v, headLengths);
  });
}

}  // namespace lifl::gpu::cuda::llm
