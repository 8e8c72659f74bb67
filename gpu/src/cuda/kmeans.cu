// k-means of KV retrieval's prompt keys on the device (kernels::llm::kmeans is the reference).
// The assignment, which is nearly all the work (keys x centroids x dims), is a tiled kernel:
// a thread holds one key in registers and tiles of centroids pass through shared memory,
// read by every thread at once. Both steps do the reference's arithmetic in its order (the
// scores' FMAs; each centroid's keys summed ascending, grouped by a stable radix sort, one
// warp a centroid), so the device clusters a prompt exactly as the CPU path does, and runs
// are deterministic.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cub/device/device_radix_sort.cuh>
#include <vector>

#include "cuda_check.h"
#include "llm_api.h"

namespace lifl::gpu::cuda::llm {
namespace {

constexpr uint32_t kKeysPerBlock = 128, kTileCentroids = 32;

/// A grid-stride loop of VAR over [0, TOTAL).
#define LIFL_GRID_STRIDE(VAR, TOTAL)                                                  \
  for (uint64_t VAR = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; VAR < (TOTAL); \
       VAR += uint64_t{gridDim.x} * blockDim.x)

/// Centroid c of each head starts at key c * n / clusters; members' values are key indices.
__global__ void seedKernel(float* __restrict__ cent, uint32_t* __restrict__ indices,
                           const float* __restrict__ keys, uint32_t n, uint32_t kvHeads,
                           uint32_t headDim, uint32_t clusters) {
  LIFL_GRID_STRIDE(x, uint64_t{kvHeads} * clusters * headDim) {
    const uint64_t d = x % headDim, kc = x / headDim;
    const uint64_t kvh = kc / clusters, c = kc % clusters;
    cent[x] = keys[((c * n / clusters) * kvHeads + kvh) * headDim + d];
  }
  LIFL_GRID_STRIDE(x, uint64_t{kvHeads} * n) indices[x] = static_cast<uint32_t>(x % n);
}

__global__ void normsKernel(float* __restrict__ norms, const float* __restrict__ cent,
                            uint64_t count, uint32_t headDim) {
  LIFL_GRID_STRIDE(c, count) {  // as the reference: one FMA a dimension, ascending
    float s = 0;
    for (uint32_t d = 0; d < headDim; ++d)
      s = __fmaf_rn(cent[c * headDim + d], cent[c * headDim + d], s);
    norms[c] = s;
  }
}

/// grid (keys / kKeysPerBlock, kvHeads): each key's nearest centroid, written as kvh * clusters
/// + c (the sort's key). The score is the reference's, operation for operation: ||c||^2, then
/// one FMA a dimension of (-2 k_d) c_d in ascending d; ties to the lowest index. Four
/// centroids at a time give the FMA pipeline four independent chains.
template <int HD>
__global__ void __launch_bounds__(kKeysPerBlock)
    assignKernel(uint32_t* __restrict__ assigned, const float* __restrict__ keys,
                 const float* __restrict__ cent, const float* __restrict__ norms, uint32_t n,
                 uint32_t kvHeads, uint32_t clusters) {
  constexpr int V = HD / 4, AT_ONCE = 4;
  static_assert(kTileCentroids % AT_ONCE == 0);
  __shared__ float4 tile[kTileCentroids][V];
  __shared__ float tileNorm[kTileCentroids];
  const uint32_t kvh = blockIdx.y, i = blockIdx.x * kKeysPerBlock + threadIdx.x;
  const float4* k4 =
      reinterpret_cast<const float4*>(keys + (uint64_t{min(i, n - 1)} * kvHeads + kvh) * HD);
  float4 key[V];  // -2 k: exact, as the reference scales it
#pragma unroll
  for (int d = 0; d < V; ++d) {
    const float4 k = k4[d];
    key[d] = make_float4(-2.f * k.x, -2.f * k.y, -2.f * k.z, -2.f * k.w);
  }
  const float4* c4 = reinterpret_cast<const float4*>(cent + uint64_t{kvh} * clusters * HD);
  float best = 0;
  uint32_t bestC = 0;
  for (uint32_t c0 = 0; c0 < clusters; c0 += kTileCentroids) {
    const uint32_t count = min(kTileCentroids, clusters - c0);
    __syncthreads();
    for (uint32_t j = threadIdx.x; j < kTileCentroids * V; j += kKeysPerBlock)
      tile[j / V][j % V] = j < count * V ? c4[uint64_t{c0} * V + j] : make_float4(0, 0, 0, 0);
    if (threadIdx.x < kTileCentroids)
      tileNorm[threadIdx.x] =
          threadIdx.x < count ? norms[uint64_t{kvh} * clusters + c0 + threadIdx.x] : 0.f;
    __syncthreads();
    for (uint32_t c = 0; c < count; c += AT_ONCE) {
      float score[AT_ONCE];
#pragma unroll
      for (int j = 0; j < AT_ONCE; ++j) score[j] = tileNorm[c + j];
#pragma unroll
      for (int d = 0; d < V; ++d)
#pragma unroll
        for (int j = 0; j < AT_ONCE; ++j) {
          const float4 t = tile[c + j][d];
          score[j] = __fmaf_rn(key[d].x, t.x, score[j]);
          score[j] = __fmaf_rn(key[d].y, t.y, score[j]);
          score[j] = __fmaf_rn(key[d].z, t.z, score[j]);
          score[j] = __fmaf_rn(key[d].w, t.w, score[j]);
        }
#pragma unroll
      for (int j = 0; j < AT_ONCE; ++j)
        if (c + j < count && ((c0 == 0 && c == 0 && j == 0) || score[j] < best)) {
          best = score[j];
          bestC = c0 + c + j;
        }
    }
  }
  if (i < n) assigned[uint64_t{kvh} * n + i] = kvh * clusters + bestC;
}

/// [begin, end) of each (head, centroid) in the sorted assignment; absent ones stay 0, 0.
__global__ void boundsKernel(uint32_t* __restrict__ begin, uint32_t* __restrict__ end,
                             const uint32_t* __restrict__ sorted, uint64_t total) {
  LIFL_GRID_STRIDE(j, total) {
    const uint32_t k = sorted[j];
    if (j == 0 || sorted[j - 1] != k) begin[k] = static_cast<uint32_t>(j);
    if (j + 1 == total || sorted[j + 1] != k) end[k] = static_cast<uint32_t>(j + 1);
  }
}

/// One warp a (head, centroid): the mean of its members, in ascending key order.
__global__ void updateKernel(float* __restrict__ cent, const float* __restrict__ keys,
                             const uint32_t* __restrict__ members,
                             const uint32_t* __restrict__ begin, const uint32_t* __restrict__ end,
                             uint32_t kvHeads, uint32_t clusters, uint32_t headDim) {
  const uint64_t kc = (uint64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32;
  if (kc >= uint64_t{kvHeads} * clusters) return;
  const uint32_t b = begin[kc], e = end[kc], kvh = static_cast<uint32_t>(kc / clusters);
  if (b == e) return;
  for (uint32_t d = threadIdx.x % 32; d < headDim; d += 32) {
    float s = 0;
    for (uint32_t j = b; j < e; ++j)
      s += keys[(uint64_t{members[j]} * kvHeads + kvh) * headDim + d];
    cent[kc * headDim + d] = s / static_cast<float>(e - b);
  }
}

template <int HD>
void launchAssign(uint32_t* assigned, const float* keys, const float* cent, const float* norms,
                  uint32_t n, uint32_t kvHeads, uint32_t clusters) {
  const dim3 blocks((n + kKeysPerBlock - 1) / kKeysPerBlock, kvHeads);
  assignKernel<HD><<<blocks, kKeysPerBlock, 0, currentStream()>>>(assigned, keys, cent, norms, n,
                                                                  kvHeads, clusters);
}

}  // namespace

bool kmeansOnDevice(uint32_t headDim) { return headDim % 32 == 0 && headDim && headDim <= 256; }

std::string kmeans(const float* keys, uint32_t n, uint32_t kvHeads, uint32_t headDim,
                   uint32_t clusters, uint32_t rounds, uint32_t* owner, float* centroids) {
  if (n == 0 || clusters == 0 || kvHeads == 0) return "";
  if (!kmeansOnDevice(headDim)) return "kmeans: the device kernel takes head dims of 32 to 256";
  const uint64_t entries = uint64_t{kvHeads} * n,
                 centFloats = uint64_t{kvHeads} * clusters * headDim;
  if (entries > INT_MAX || uint64_t{kvHeads} * clusters > INT_MAX) return "kmeans: too many keys";
  Buffer dKeys, cent, norms, assigned, sorted, indices, members, begin, end, temp;
  LIFL_TRY_STR(dKeys.reserve(entries * headDim * 4));
  LIFL_CU(
      cudaMemcpyAsync(dKeys.p, keys, entries * headDim * 4, cudaMemcpyDefault, currentStream()));
  LIFL_TRY_STR(cent.reserve(centFloats * 4));
  LIFL_TRY_STR(norms.reserve(uint64_t{kvHeads} * clusters * 4));
  for (Buffer* b : {&assigned, &sorted, &indices, &members}) LIFL_TRY_STR(b->reserve(entries * 4));
  for (Buffer* b : {&begin, &end}) LIFL_TRY_STR(b->reserve(uint64_t{kvHeads} * clusters * 4));
  const int items = static_cast<int>(entries);
  int endBit = 1;  // the sort looks at the bits the keys use
  while (endBit < 32 && (kvHeads * clusters - 1) >> endBit) ++endBit;
  size_t tempBytes = 0;
  LIFL_CU(cub::DeviceRadixSort::SortPairs(
      nullptr, tempBytes, assigned.as<uint32_t>(), sorted.as<uint32_t>(), indices.as<uint32_t>(),
      members.as<uint32_t>(), items, 0, endBit, currentStream()));
  LIFL_TRY_STR(temp.reserve(std::max<size_t>(tempBytes, 1)));
  const float* k = dKeys.as<float>();
  seedKernel<<<grid(std::max(centFloats, entries)), 256, 0, currentStream()>>>(
      cent.as<float>(), indices.as<uint32_t>(), k, n, kvHeads, headDim, clusters);
  for (uint32_t round = 0; round < rounds; ++round) {
    normsKernel<<<grid(uint64_t{kvHeads} * clusters), 256, 0, currentStream()>>>(
        norms.as<float>(), cent.as<float>(), uint64_t{kvHeads} * clusters, headDim);
    switch (headDim) {
#define LIFL_ASSIGN(HD)                                                                           \
  case HD:                                                                                        \
    launchAssign<HD>(assigned.as<uint32_t>(), k, cent.as<float>(), norms.as<float>(), n, kvHeads, \
                     clusters);                                                                   \
    break;
      LIFL_ASSIGN(32)
      LIFL_ASSIGN(64)
      LIFL_ASSIGN(96)
      LIFL_ASSIGN(128)
      LIFL_ASSIGN(160)
      LIFL_ASSIGN(192)
      LIFL_ASSIGN(224)
      LIFL_ASSIGN(256)
#undef LIFL_ASSIGN
    }
    LIFL_CU(cudaGetLastError());
    LIFL_CU(cub::DeviceRadixSort::SortPairs(
        temp.p, tempBytes, assigned.as<uint32_t>(), sorted.as<uint32_t>(), indices.as<uint32_t>(),
        members.as<uint32_t>(), items, 0, endBit, currentStream()));
    for (Buffer* b : {&begin, &end})
      LIFL_CU(cudaMemsetAsync(b->p, 0, uint64_t{kvHeads} * clusters * 4, currentStream()));
    boundsKernel<<<grid(entries), 256, 0, currentStream()>>>(
        begin.as<uint32_t>(), end.as<uint32_t>(), sorted.as<uint32_t>(), entries);
    updateKernel<<<grid(uint64_t{kvHeads} * clusters * 32), 256, 0, currentStream()>>>(
        cent.as<float>(), k, members.as<uint32_t>(), begin.as<uint32_t>(), end.as<uint32_t>(),
        kvHeads, clusters, headDim);
    LIFL_CU(cudaGetLastError());
  }
  LIFL_CU(cudaMemcpyAsync(owner, assigned.p, entries * 4, cudaMemcpyDefault, currentStream()));
  LIFL_CU(cudaMemcpyAsync(centroids, cent.p, centFloats * 4, cudaMemcpyDefault, currentStream()));
  LIFL_CU(cudaStreamSynchronize(currentStream()));
  for (uint64_t x = 0; x < entries; ++x) owner[x] -= static_cast<uint32_t>(x / n) * clusters;
  return "";
}

}  // namespace lifl::gpu::cuda::llm
