// CUDA kernels of the LLM stages and the device forward pass that strings them together
// (docs/llm.md). Weights are held in BF16, activations in fp32, the paged KV cache in BF16 or
// fp32 (kv_element.h).
// Each kernel has its CPU reference in gpu/src/cpu/llm.cc; the tests compare them.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <vector>

#include "cuda_check.h"
#include "decode_attention.h"
#include "kv_element.h"
#include "llm_api.h"
#include "pick_tokens.h"
#include "quant_linear.h"

namespace lifl::gpu::cuda::llm {

using kernels::llm::Pick;
namespace {

constexpr uint32_t kNoPage = 0xFFFFFFFFu;
constexpr int kMaxRows = 16;  ///< activation rows per pass of the linear kernel over a weight

__device__ __forceinline__ float warpSum(float v) {
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
__device__ __forceinline__ float warpMax(float v) {
  for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}
/// Sum (or max) over the block; every thread gets it. Needs 32 floats of shared memory.
template <bool Max>
__device__ float blockReduce(float v, float* shared) {
  v = Max ? warpMax(v) : warpSum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : (Max ? -INFINITY : 0.f);
  v = Max ? warpMax(v) : warpSum(v);
  return v;
}

__global__ void rmsNormKernel(float* __restrict__ out, float* __restrict__ residual,
                              const float* __restrict__ x, const float* __restrict__ w, uint64_t n,
                              float eps) {
  __shared__ float shared[32];
  afterPrerequisites();
  const uint64_t row = blockIdx.x;
  float* res = residual ? residual + row * n : nullptr;
  const float* in = x + row * n;
  float sum = 0;
  for (uint64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = res ? (res[i] += in[i]) : in[i];
    sum += v * v;
  }
  const float total = blockReduce<false>(sum, shared);
  const float inv = 1.0f / sqrtf(total / static_cast<float>(n) + eps);
  const float* src = res ? res : in;
  for (uint64_t i = threadIdx.x; i < n; i += blockDim.x) out[row * n + i] = src[i] * inv * w[i];
}

// RoPE over the query heads of q and the KV heads of k (one launch for both: a decode step
// is a chain of small kernels, each with its own fixed cost).
__global__ void ropeKernel(float* __restrict__ q, float* __restrict__ k, uint64_t rows,
                           uint32_t heads, uint32_t kvHeads, uint32_t headDim,
                           const uint32_t* __restrict__ positions,
                           const float* __restrict__ invFreq) {
  afterPrerequisites();
  const uint32_t half = headDim / 2;
  const uint64_t ofQ = rows * heads * half, total = ofQ + rows * kvHeads * half;
  for (uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total;
       i += uint64_t{gridDim.x} * blockDim.x) {
    const bool isQ = i < ofQ;
    const uint64_t e = isQ ? i : i - ofQ;
    const uint32_t j = e % half;
    const uint64_t rh = e / half, row = rh / (isQ ? heads : kvHeads);
    float* v = (isQ ? q : k) + rh * headDim;
    const float angle = static_cast<float>(positions[row]) * invFreq[j];
    float s, c;
    sincosf(angle, &s, &c);
    const float a = v[j], b = v[j + half];
    v[j] = a * c - b * s;
    v[j + half] = b * c + a * s;
  }
}

__global__ void siluMulKernel(float* __restrict__ out, const float* __restrict__ gate,
                              const float* __restrict__ up, uint64_t n) {
  afterPrerequisites();
  for (uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += uint64_t{gridDim.x} * blockDim.x)
    out[i] = gate[i] / (1.0f + __expf(-gate[i])) * up[i];
}

__global__ void addKernel(float* __restrict__ x, const float* __restrict__ y, uint64_t n) {
  afterPrerequisites();
  for (uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += uint64_t{gridDim.x} * blockDim.x)
    x[i] += y[i];
}

__global__ void embedKernel(float* __restrict__ x, const __nv_bfloat16* __restrict__ table,
                            const uint32_t* __restrict__ tokens, uint64_t rows, uint64_t n) {
  afterPrerequisites();
  for (uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < rows * n;
       i += uint64_t{gridDim.x} * blockDim.x)
    x[i] = __bfloat162float(table[uint64_t{tokens[i / n]} * n + i % n]);
}

// y[r][o] = x[r] . W[o] for up to kMaxRows rows: one warp per output, 8 BF16 weights (16
// bytes) per lane per step, so the weight matrix streams through once per pass (decode is
// bound by reading the weights).
__global__ void linearKernel(const LinearOutputs y, const float* __restrict__ x,
                             const __nv_bfloat16* __restrict__ w, uint32_t rows, uint64_t in,
                             uint64_t out) {
  const uint64_t o = uint64_t{blockIdx.x} * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  // The weights are the model's, written by no kernel of the step: the first 16 bytes of
  // this lane's row are on their way while the kernel before finishes.
  const __nv_bfloat16* row = w + (o < out ? o : 0) * in;
  const uint64_t first = static_cast<uint64_t>(lane) * 8;
  uint4 next = first < in ? *reinterpret_cast<const uint4*>(row + first) : uint4{};
  afterPrerequisites();
  if (o >= out) return;
  float acc[kMaxRows] = {};
  for (uint64_t i = first; i < in; i += 32 * 8) {
    const uint4 raw = next;
    if (i + 32 * 8 < in) next = *reinterpret_cast<const uint4*>(row + i + 32 * 8);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
    float wv[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __bfloat1622float2(h[j]);
      wv[2 * j] = f.x, wv[2 * j + 1] = f.y;
    }
#pragma unroll
    for (int r = 0; r < kMaxRows; ++r) {
      if (r >= rows) break;
      const float4 a = *reinterpret_cast<const float4*>(x + r * in + i);
      const float4 b = *reinterpret_cast<const float4*>(x + r * in + i + 4);
      acc[r] += wv[0] * a.x + wv[1] * a.y + wv[2] * a.z + wv[3] * a.w + wv[4] * b.x + wv[5] * b.y +
                wv[6] * b.z + wv[7] * b.w;
    }
  }
#pragma unroll
  for (int r = 0; r < kMaxRows; ++r) {
    if (r >= rows) break;
    const float s = warpSum(acc[r]);
    if (lane != 0) continue;
    if (float* to = y.at(r, static_cast<uint32_t>(o))) *to = s;
  }
}

// One warp per copy: a KV head's K and V of one position, from host memory (zero-copy) into
// a row of a retrieval row's working-set pages.
template <typename T>
__global__ void workingSetKernel(T* __restrict__ kPages, T* __restrict__ vPages,
                                 const WorkingSetCopy* __restrict__ copies, uint32_t count,
                                 const uint32_t* __restrict__ tables,
                                 const uint32_t* __restrict__ rowTable, uint32_t kvHeads,
                                 uint32_t headDim) {
  const uint32_t warps = blockDim.x / 32, lane = threadIdx.x % 32;
  for (uint32_t c = blockIdx.x * warps + threadIdx.x / 32; c < count; c += gridDim.x * warps) {
    const WorkingSetCopy w = copies[c];
    const uint32_t* table = tables + rowTable[w.row];
    const uint64_t to =
        kvRowAt(table[w.dest / kPageTokens], w.dest % kPageTokens, w.head, kvHeads, headDim);
    const uint64_t from = uint64_t{w.head} * headDim;
    for (uint32_t d = lane; d < headDim; d += 32) {
      kPages[to + d] = kvFromFloat<T>(w.k[from + d]);
      vPages[to + d] = kvFromFloat<T>(w.v[from + d]);
    }
  }
}

/// The working-set copies on the current stream, into pages of the cache's type.
std::string copyWorkingSet(const KvRef& kv, const WorkingSetCopy* copies, uint32_t count,
                           const uint32_t* tables, const uint32_t* rowTable, uint32_t kvHeads,
                           uint32_t headDim) {
  return withKv(kv, [&](auto* k, auto* v) -> std::string {
    workingSetKernel<<<std::min<uint32_t>((count + 7) / 8, 1024), 256, 0, currentStream()>>>(
        k, v, copies, count, tables, rowTable, kvHeads, headDim);
    LIFL_CU(cudaGetLastError());
    return "";
  });
}

template <typename T>
__global__ void storeKvKernel(T* __restrict__ kPages, T* __restrict__ vPages,
                              const float* __restrict__ ks, const float* __restrict__ vs,
                              const uint32_t* __restrict__ rowPage,
                              const uint32_t* __restrict__ rowSlot, uint64_t rows, uint32_t kvHeads,
                              uint32_t headDim) {
  afterPrerequisites();
  const uint64_t kvDim = uint64_t{kvHeads} * headDim;
  for (uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < rows * kvDim;
       i += uint64_t{gridDim.x} * blockDim.x) {
    const uint64_t r = i / kvDim, d = i % kvDim;
    if (rowPage[r] == kNoPage) continue;  // a retrieval row: its working set is copied apart
    const uint64_t at =
        kvRowAt(rowPage[r], rowSlot[r], static_cast<uint32_t>(d / headDim), kvHeads, headDim) +
        d % headDim;
    kPages[at] = kvFromFloat<T>(ks[i]);
    vPages[at] = kvFromFloat<T>(vs[i]);
  }
}

// Prefill attention, tiled (FlashAttention-2's schedule without tensor cores): a block takes
// kTileRows consecutive query rows of one sequence and one KV head, for every query head of
// its group; K/V tiles of 32 positions are loaded into shared memory once for all of them,
// and each (row, head) pair keeps an online softmax in a warp (lane k scores key k, lanes
// own output dimensions). Rows are at consecutive positions starting at positions[0].
constexpr uint32_t kTileRows = 16;
template <int GROUP, int DL, typename T>
__global__ void prefillAttentionKernel(float* __restrict__ out, const float* __restrict__ q,
                                       const uint32_t* __restrict__ positions,
                                       const uint32_t* __restrict__ table, uint32_t rows,
                                       uint32_t heads, uint32_t kvHeads,
                                       const T* __restrict__ kPages, const T* __restrict__ vPages) {
  constexpr int HD = DL * 32, PAIRS = kTileRows * GROUP, WARPS = 8;
  extern __shared__ float shared[];
  float* sK = shared;              // [32][HD + 1]
  float* sV = sK + 32 * (HD + 1);  // [32][HD]
  float* sQ = sV + 32 * HD;        // [PAIRS][HD]
  const uint32_t r0 = blockIdx.x * kTileRows, kvh = blockIdx.y;
  const uint32_t tileRows = min(kTileRows, rows - r0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float scale = rsqrtf(static_cast<float>(HD));
  for (uint32_t i = threadIdx.x; i < PAIRS * HD; i += blockDim.x) {
    const uint32_t pair = i / HD, d = i % HD, r = pair / GROUP, g = pair % GROUP;
    sQ[i] = r < tileRows ? q[(uint64_t{r0 + r} * heads + kvh * GROUP + g) * HD + d] * scale : 0.f;
  }
  constexpr int MINE = PAIRS / WARPS;  // pairs per warp: pair = warp + WARPS * k
  float m[MINE], l[MINE], acc[MINE][DL];
#pragma unroll
  for (int k = 0; k < MINE; ++k) {
    m[k] = -INFINITY;
    l[k] = 0.f;
#pragma unroll
    for (int j = 0; j < DL; ++j) acc[k][j] = 0.f;
  }
  const uint32_t first = positions[0];
  const uint32_t lastPos = first + r0 + tileRows - 1;
  for (uint32_t t0 = 0; t0 <= lastPos; t0 += 32) {
    __syncthreads();  // the previous tile is read by every warp
    for (uint32_t i = threadIdx.x; i < 32 * HD; i += blockDim.x) {
      const uint32_t k = i / HD, d = i % HD, t = t0 + k;
      float kv = 0.f, vv = 0.f;
      if (t <= lastPos) {
        const uint64_t at = kvRowAt(table[t / kPageTokens], t % kPageTokens, kvh, kvHeads, HD) + d;
        kv = kvToFloat(kPages[at]);
        vv = kvToFloat(vPages[at]);
      }
      sK[k * (HD + 1) + d] = kv;
      sV[k * HD + d] = vv;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < MINE; ++k) {
      const uint32_t pair = warp + WARPS * k, r = pair / GROUP;
      if (r >= tileRows) continue;
      const uint32_t pos = first + r0 + r, t = t0 + lane;
      float s = -INFINITY;
      if (t <= pos) {
        s = 0.f;
        const float* qp = sQ + pair * HD;
        const float* kp = sK + lane * (HD + 1);
#pragma unroll 16
        for (int d = 0; d < HD; ++d) s += qp[d] * kp[d];
      }
      const float mNew = fmaxf(m[k], warpMax(s));
      if (mNew == -INFINITY) continue;  // no key of this tile is visible to the row
      const float p = t <= pos ? __expf(s - mNew) : 0.f;
      const float correction = __expf(m[k] - mNew);
      l[k] = l[k] * correction + warpSum(p);
#pragma unroll
      for (int j = 0; j < DL; ++j) acc[k][j] *= correction;
      for (int key = 0; key < 32; ++key) {
        const float pk = __shfl_sync(0xffffffffu, p, key);
#pragma unroll
        for (int j = 0; j < DL; ++j) acc[k][j] += pk * sV[key * HD + j * 32 + lane];
      }
      m[k] = mNew;
    }
  }
#pragma unroll
  for (int k = 0; k < MINE; ++k) {
    const uint32_t pair = warp + WARPS * k, r = pair / GROUP, g = pair % GROUP;
    if (r >= tileRows) continue;
#pragma unroll
    for (int j = 0; j < DL; ++j)
      out[(uint64_t{r0 + r} * heads + kvh * GROUP + g) * HD + j * 32 + lane] = acc[k][j] / l[k];
  }
}

std::string uploadBf16(Buffer& b, const float* host, uint64_t n) {
  std::vector<__nv_bfloat16> tmp(n);
  for (uint64_t i = 0; i < n; ++i) tmp[i] = __float2bfloat16(host[i]);
  LIFL_TRY_STR(b.reserve(n * 2));
  LIFL_CU(cudaMemcpy(b.p, tmp.data(), n * 2, cudaMemcpyHostToDevice));
  return "";
}
std::string uploadF32(Buffer& b, const void* host, size_t bytes) {
  LIFL_TRY_STR(b.reserve(bytes));
  LIFL_CU(cudaMemcpy(b.p, host, bytes, cudaMemcpyHostToDevice));
  return "";
}

std::string linear(const LinearOutputs& y, const float* x, const __nv_bfloat16* w, uint64_t rows,
                   uint64_t in, uint64_t out) {
  if (in % 8) return "linear: the input width must be a multiple of 8";
  for (uint64_t r = 0; r < rows; r += kMaxRows) {
    const auto n = static_cast<uint32_t>(std::min<uint64_t>(kMaxRows, rows - r));
    LIFL_CU(launchDependent(linearKernel, dim3(static_cast<unsigned>((out + 7) / 8)), dim3(256),
                            y.from(r), x + r * in, w, n, in, out));
  }
  LIFL_CU(cudaGetLastError());
  return "";
}

/// Scratch of the split decode attention (per process, grown as needed): its partials, and
/// its arrival counters (zeroed when grown; each call leaves them zero).
Buffer& splitScratch() {
  static Buffer b;
  return b;
}
Buffer& splitArrivals() {
  static Buffer b;
  return b;
}
std::string reserveSplitScratch(uint32_t rows, uint32_t heads, uint32_t kvHeads, uint32_t headDim,
                                uint32_t maxContext) {
  LIFL_TRY_STR(splitScratch().reserve(splitPartialBytes(rows, heads, headDim, maxContext)));
  const size_t arrivalBytes = splitArrivalBytes(rows, kvHeads);
  if (arrivalBytes <= splitArrivals().bytes) return "";
  LIFL_TRY_STR(splitArrivals().reserve(arrivalBytes));
  LIFL_CU(cudaMemset(splitArrivals().p, 0, arrivalBytes));
  return "";
}

// cuBLAS, loaded when first needed (the library is not a link dependency): the baseline of
// the linear benchmark, and the tensor-core GEMM of --gemm cublas.
struct Cublas {
  using Create = int (*)(void**);
  using GemmEx = int (*)(void*, int, int, int, int, int, const void*, const void*, int, int,
                         const void*, int, int, const void*, void*, int, int, int, int);
  using SetStream = int (*)(void*, cudaStream_t);
  Create create = nullptr;
  GemmEx gemmEx = nullptr;
  SetStream setStream = nullptr;
  void* handle = nullptr;
  std::string why;
};
const Cublas& cublas() {
  static Cublas c = [] {
    Cublas c;
    void* lib = nullptr;
    for (const char* name : {"libcublas.so.13", "/usr/local/cuda/lib64/libcublas.so.13",
                             "libcublas.so.12", "libcublas.so"})
      if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL))) break;
    if (!lib) {
      c.why = "cannot load libcublas";
      return c;
    }
    c.create = reinterpret_cast<Cublas::Create>(dlsym(lib, "cublasCreate_v2"));
    c.gemmEx = reinterpret_cast<Cublas::GemmEx>(dlsym(lib, "cublasGemmEx"));
    c.setStream = reinterpret_cast<Cublas::SetStream>(dlsym(lib, "cublasSetStream_v2"));
    if (!c.create || !c.gemmEx || !c.setStream || c.create(&c.handle) != 0)
      c.why = "cannot start cuBLAS";
    return c;
  }();
  return c;
}

/// A linear layer's weight on the device: BF16, or quantised (8/4 bits) with its scales, in
/// the tensor-core layout of quant_linear.h. One matrix, or several that read the same input
/// stacked into one (uploadStacked): part p is rows [starts[p], starts[p] + widths[p]).
struct Weight {
  Buffer data, scales;
  uint32_t bits = 16;
  uint64_t out = 0;  ///< rows, with the padding between quantised parts
  std::vector<uint64_t> starts, widths;
  /// Part p's outputs to ys[p].
  LinearOutputs outputs(std::initializer_list<float*> ys) const {
    LinearOutputs o;
    size_t p = 0;
    for (float* y : ys) {
      o.add(y, starts[p], widths[p]);
      ++p;
    }
    return o;
  }
};

/// y[rows][out] (fp32) = x W^T with x and W in BF16, fp32 compute, through cuBLAS GemmEx:
/// column-major C[out x rows] = W^T[out x in] X[in x rows], W read as [in x out] (lda in).
std::string gemmBf16(float* y, const __nv_bfloat16* x, const __nv_bfloat16* w, uint64_t rows,
                     uint64_t in, uint64_t out) {
  const auto& c = cublas();
  if (!c.why.empty()) return c.why;
  const float alpha = 1, beta = 0;
  constexpr int kOpN = 0, kOpT = 1, kBf16 = 14, kF32 = 0, kCompute32F = 68, kDefault = -1;
  if (c.setStream(c.handle, currentStream()) != 0) return "cublasSetStream failed";
  if (c.gemmEx(c.handle, kOpT, kOpN, static_cast<int>(out), static_cast<int>(rows),
               static_cast<int>(in), &alpha, w, kBf16, static_cast<int>(in), x, kBf16,
               static_cast<int>(in), &beta, y, kF32, static_cast<int>(out), kCompute32F,
               kDefault) != 0)
    return "cublasGemmEx failed";
  return "";
}

__global__ void toBf16Kernel(__nv_bfloat16* __restrict__ out, const float* __restrict__ x,
                             uint64_t n) {
  for (uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += uint64_t{gridDim.x} * blockDim.x)
    out[i] = __float2bfloat16(x[i]);
}

/// From this many rows, --gemm cublas sends BF16 linears to the tensor cores.
constexpr uint64_t kCublasFromRows = 8;

/// y = x W^T for x[rows][in]. With `tensorCoreScratch` (--gemm cublas), BF16 weights go to
/// the tensor cores from kCublasFromRows rows: the activations rounded to BF16 once, then one
/// cuBLAS GEMM per part; otherwise one kernel for every part.
std::string apply(const LinearOutputs& y, const float* x, const Weight& w, uint64_t rows,
                  uint64_t in, Buffer* tensorCoreScratch = nullptr) {
  if (w.bits == 16 && tensorCoreScratch && rows >= kCublasFromRows) {
    LIFL_TRY_STR(tensorCoreScratch->reserve(rows * in * 2));
    auto* xb = tensorCoreScratch->as<__nv_bfloat16>();
    toBf16Kernel<<<grid(rows * in), 256, 0, currentStream()>>>(xb, x, rows * in);
    for (int p = 0; p < y.parts; ++p)
      LIFL_TRY_STR(gemmBf16(y.y[p], xb, w.data.as<__nv_bfloat16>() + uint64_t{y.start[p]} * in,
                            rows, in, y.width[p]));
    return "";
  }
  if (w.bits == 16) return linear(y, x, w.data.as<__nv_bfloat16>(), rows, in, w.out);
  return quantLinear(y, x, w.bits, w.data.p, w.scales.as<float>(), rows, in, w.out);
}
std::string apply(float* y, const float* x, const Weight& w, uint64_t rows, uint64_t in,
                  Buffer* tensorCoreScratch = nullptr) {
  return apply(w.outputs({y}), x, w, rows, in, tensorCoreScratch);
}

/// Uploads `parts` ({weight, rows}, all with `in` inputs and the same bits) stacked into one
/// matrix. Quantised parts start on whole tiles of the shuffled layout (zero rows between).
std::string uploadStacked(Weight& w,
                          const std::vector<std::pair<const HostLinear*, uint64_t>>& parts,
                          uint64_t in) {
  w.bits = parts.front().first->bits;
  const uint64_t align = w.bits == 16 ? 1 : kQuantTileRows;
  w.out = 0;
  for (const auto& [h, rows] : parts) {
    if (h->bits != w.bits) return "stacked linear layers must share their precision";
    w.starts.push_back(w.out);
    w.widths.push_back(rows);
    w.out += (rows + align - 1) / align * align;
  }
  if (w.bits == 16) {
    std::vector<float> stacked(w.out * in, 0.f);
    size_t p = 0;
    for (const auto& [h, rows] : parts)
      std::copy_n(h->weight, rows * in, stacked.begin() + w.starts[p++] * in);
    return uploadBf16(w.data, stacked.data(), stacked.size());
  }
  if (in % 128) return "quantised linear: the input width must be a multiple of 128";
  const uint64_t rowBytes = in * w.bits / 8, groups = in / 128;
  std::vector<int8_t> q(w.out * rowBytes, 0);  // zero rows: zero weights
  std::vector<float> scales(w.out * groups, 0.f);
  size_t p = 0;
  for (const auto& [h, rows] : parts) {
    std::copy_n(h->q, rows * rowBytes, q.begin() + w.starts[p] * rowBytes);
    std::copy_n(h->scales, rows * groups, scales.begin() + w.starts[p] * groups);
    ++p;
  }
  const auto words = shuffleQuantised(q.data(), w.bits, w.out, in);
  const auto padded = padScales(scales.data(), w.out, in);
  LIFL_TRY_STR(uploadF32(w.data, words.data(), words.size() * 4));
  return uploadF32(w.scales, padded.data(), padded.size() * 4);
}
std::string uploadWeight(Weight& w, const HostLinear& h, uint64_t out, uint64_t in) {
  return uploadStacked(w, {{&h, out}}, in);
}

/// @param prefill the rows are one sequence's, at consecutive positions (`table` its block
///        table): they may take the tiled prefill kernel
/// @param headLengths per (row, KV head), the rows of the pages it attends to (a working set
///        of retrieved rows), instead of positions[row] + 1; maxContext bounds them
std::string attend(float* out, const float* q, uint32_t rows, const uint32_t* positions,
                   const uint32_t* tables, const uint32_t* rowTable, uint32_t maxContext,
                   uint32_t heads, uint32_t kvHeads, uint32_t headDim, const KvRef& kv,
                   const uint32_t* prefillTable = nullptr, const uint32_t* headLengths = nullptr) {
  const uint32_t group = heads / kvHeads, lanes = headDim / 32;
  if (prefillTable && rows >= kTileRows && (group == 1 || group == 2 || group == 4) &&
      (lanes == 2 || lanes == 4)) {
    const dim3 blocks((rows + kTileRows - 1) / kTileRows, kvHeads);
    return withKv(kv, [&](const auto* kPages, const auto* vPages) -> std::string {
      using T = std::remove_cv_t<std::remove_pointer_t<decltype(kPages)>>;
#define LIFL_PREFILL(G, DL)                                                                     \
  if (group == G && lanes == DL) {                                                              \
    constexpr size_t bytes = (32 * (DL * 32 + 1) + 32 * DL * 32 + kTileRows * G * DL * 32) * 4; \
    if (bytes > 48 * 1024)                                                                      \
      LIFL_CU(cudaFuncSetAttribute(prefillAttentionKernel<G, DL, T>,                            \
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));        \
    prefillAttentionKernel<G, DL, T><<<blocks, 256, bytes, currentStream()>>>(                  \
        out, q, positions, prefillTable, rows, heads, kvHeads, kPages, vPages);                 \
    LIFL_CU(cudaGetLastError());                                                                \
    return "";                                                                                  \
  }
      LIFL_PREFILL(1, 2)
      LIFL_PREFILL(2, 2)
      LIFL_PREFILL(4, 2)
      LIFL_PREFILL(1, 4)
      LIFL_PREFILL(2, 4)
      LIFL_PREFILL(4, 4)
#undef LIFL_PREFILL
      return "prefill attention: no kernel for this shape";
    });
  }
  LIFL_TRY_STR(reserveSplitScratch(rows, heads, kvHeads, headDim, maxContext));
  return splitDecodeAttention(out, splitScratch().as<float>(), splitArrivals().as<uint32_t>(), q,
                              rows, positions, tables, rowTable, maxContext, heads, kvHeads,
                              headDim, kv, headLengths);
}

}  // namespace

struct Model {
  Shape s;
  Buffer embed, norm, lmHead, invFreq;
  struct Layer {
    Buffer inputNorm, postNorm, kPages, vPages;
    Weight qkv, o, gateUp, down;  ///< q, k, v stacked; gate, up stacked
  };
  std::vector<Layer> layers;
  KvRef kv(Layer& L) const { return {L.kPages.p, L.vPages.p, s.kv}; }
  Buffer kvRows, kvPageList;  ///< a KV hand-off's dense rows and its pages (copyKv)
  Buffer x, normed, qs, ks, vs, attn, proj, gate, up, logits, last, bf16x;
  Buffer picks, drawn;  ///< a step's tokens picked on the device (launchPickTokens)
  Buffer tokens, positions, rowPage, rowSlot, tables, rowTable, logitRows;
  Buffer copies, headLengths;  ///< a retrieval step's working-set copies and lengths
  // Decode steps run as CUDA graphs (one launch for 11 kernels a layer), captured on the
  // model's stream once per shape of step and replayed; the key holds what a capture bakes
  // in: the row and logit counts, the attention's split, and every buffer's address.
  cudaStream_t stream = nullptr;
  std::map<std::vector<uintptr_t>, cudaGraphExec_t> graphs;
  ~Model() {
    for (auto& [_, exec] : graphs) cudaGraphExecDestroy(exec);
    if (stream) cudaStreamDestroy(stream);
  }
};

std::string create(const Shape& s, const float* embed, const float* norm, const float* lmHead,
                   const std::vector<HostLayer>& layers, Model** out) {
  auto m = std::make_unique<Model>();
  m->s = s;
  // A blocking stream: the synchronous copies on the default stream stay ordered with it.
  LIFL_CU(cudaStreamCreate(&m->stream));
  const uint64_t h = s.hidden, q = uint64_t{s.heads} * s.headDim,
                 kv = uint64_t{s.kvHeads} * s.headDim, inter = s.inter;
  LIFL_TRY_STR(uploadBf16(m->embed, embed, uint64_t{s.vocab} * h));
  LIFL_TRY_STR(uploadF32(m->norm, norm, h * 4));
  LIFL_TRY_STR(uploadBf16(m->lmHead, lmHead, uint64_t{s.vocab} * h));
  std::vector<float> inv(s.headDim / 2);
  for (uint32_t i = 0; i < inv.size(); ++i)  // as the CPU reference computes it
    inv[i] = static_cast<float>(1.0 / std::pow(s.theta, (2.0 * i) / s.headDim));
  LIFL_TRY_STR(uploadF32(m->invFreq, inv.data(), inv.size() * 4));
  m->layers.resize(layers.size());
  const size_t pageBytes = size_t{s.maxPages} * kPageTokens * kv * kvBytes(s.kv);
  for (size_t l = 0; l < layers.size(); ++l) {
    auto& d = m->layers[l];
    const auto& w = layers[l];
    LIFL_TRY_STR(uploadF32(d.inputNorm, w.inputNorm, h * 4));
    LIFL_TRY_STR(uploadF32(d.postNorm, w.postNorm, h * 4));
    LIFL_TRY_STR(uploadStacked(d.qkv, {{&w.q, q}, {&w.k, kv}, {&w.v, kv}}, h));
    LIFL_TRY_STR(uploadWeight(d.o, w.o, h, q));
    LIFL_TRY_STR(uploadStacked(d.gateUp, {{&w.gate, inter}, {&w.up, inter}}, h));
    LIFL_TRY_STR(uploadWeight(d.down, w.down, h, inter));
    LIFL_TRY_STR(d.kPages.reserve(pageBytes));
    LIFL_TRY_STR(d.vPages.reserve(pageBytes));
  }
  *out = m.release();
  return "";
}

void destroy(Model* model) { delete model; }

namespace {

/// Rows [0, length) of a sequence (page list `pages`) between its pages (of P) and dense rows
/// (of R): to the rows (toRows), or from them.
template <typename P, typename R, bool toRows>
__global__ void pageRowsKernel(R* __restrict__ rows, P* __restrict__ pages,
                               const uint32_t* __restrict__ pageList, uint32_t length,
                               uint32_t kvHeads, uint32_t headDim) {
  const uint64_t kvDim = uint64_t{kvHeads} * headDim;
  for (uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < length * kvDim;
       i += uint64_t{gridDim.x} * blockDim.x) {
    const uint64_t t = i / kvDim, d = i % kvDim;
    P& paged = pages[kvRowAt(pageList[t / kPageTokens], t % kPageTokens,
                             static_cast<uint32_t>(d / headDim), kvHeads, headDim) +
                     d % headDim];
    if constexpr (toRows)
      rows[i] = convertKv<R>(paged);
    else
      paged = convertKv<P>(rows[i]);
  }
}

}  // namespace

std::string copyKv(Model* m, const uint32_t* pages, uint32_t length, void* other, bool fromPages,
                   KvDtype rowType, uint32_t stride) {
  if (length == 0) return "";
  const uint64_t kv = uint64_t{m->s.kvHeads} * m->s.headDim, block = uint64_t{length} * kv;
  const uint64_t rowBytes = kvBytes(rowType);
  const uint64_t step = uint64_t{stride > length ? stride : length} * kv * rowBytes;
  // Each (layer, K/V) block through dense rows on the device, converted from or to the
  // pages' type by one kernel: `other` may be pageable host memory, which a kernel cannot
  // address (and one copy a block beats one a page: 2 048 pages a block at 32K).
  LIFL_TRY_STR(uploadF32(m->kvPageList, pages, (length + kPageTokens - 1) / kPageTokens * 4));
  LIFL_TRY_STR(m->kvRows.reserve(block * rowBytes));
  const auto* list = m->kvPageList.as<uint32_t>();
  auto* at = static_cast<std::byte*>(other);
  for (auto& L : m->layers)
    for (int kind = 0; kind < 2; ++kind, at += step) {
      LIFL_TRY_STR(withKv(m->kv(L), [&](auto* k, auto* v) -> std::string {
        auto* paged = kind == 0 ? k : v;
        using P = std::remove_pointer_t<decltype(paged)>;
        return withElements(m->kvRows.p, rowType, [&](auto* rows) -> std::string {
          using R = std::remove_pointer_t<decltype(rows)>;
          // cudaMemcpyDefault: `other` may be host or device memory (unified addressing).
          if (fromPages) {
            pageRowsKernel<P, R, true>
                <<<grid(block), 256>>>(rows, paged, list, length, m->s.kvHeads, m->s.headDim);
            LIFL_CU(cudaMemcpy(at, rows, block * rowBytes, cudaMemcpyDefault));
          } else {
            LIFL_CU(cudaMemcpy(rows, at, block * rowBytes, cudaMemcpyDefault));
            pageRowsKernel<P, R, false>
                <<<grid(block), 256>>>(rows, paged, list, length, m->s.kvHeads, m->s.headDim);
          }
          LIFL_CU(cudaGetLastError());
          return "";
        });
      }));
    }
  LIFL_CU(cudaDeviceSynchronize());
  return "";
}

std::string pinnedAllocate(size_t bytes, void** host, void** device) {
  LIFL_CU(cudaHostAlloc(host, bytes, cudaHostAllocMapped));
  if (cudaError_t e = cudaHostGetDevicePointer(device, *host, 0); e != cudaSuccess) {
    cudaFreeHost(*host);
    return failed(e, "cudaHostGetDevicePointer");
  }
  return "";
}

void pinnedFree(void* host) { cudaFreeHost(host); }

static_assert(sizeof(cudaIpcMemHandle_t) == 64, "llm_api.h promises 64-byte handles");

std::string ipcAllocate(size_t bytes, void** device, unsigned char* handle) {
  LIFL_CU(cudaMalloc(device, bytes));
  cudaIpcMemHandle_t h;
  if (cudaError_t e = cudaIpcGetMemHandle(&h, *device); e != cudaSuccess) {
    cudaFree(*device);
    return failed(e, "cudaIpcGetMemHandle");
  }
  std::memcpy(handle, &h, sizeof h);
  return "";
}

std::string ipcOpen(const unsigned char* handle, void** device) {
  cudaIpcMemHandle_t h;
  std::memcpy(&h, handle, sizeof h);
  LIFL_CU(cudaIpcOpenMemHandle(device, h, cudaIpcMemLazyEnablePeerAccess));
  return "";
}

void ipcRelease(void* device, bool opened) {
  if (opened)
    cudaIpcCloseMemHandle(device);
  else
    cudaFree(device);
}

namespace {

__global__ void gatherRowsKernel(float* __restrict__ out, const float* __restrict__ x,
                                 const uint32_t* __restrict__ rows, uint32_t count, uint64_t n) {
  afterPrerequisites();
  for (uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count * n;
       i += uint64_t{gridDim.x} * blockDim.x)
    out[i] = x[uint64_t{rows[i / n]} * n + i % n];
}

/// A retrieval step's layer (RetrievalStep): the retrieval rows' q, k, v to the host, the
/// host's decision, then its copies into the working sets and every row's attended lengths.
std::string retrievalLayer(Model* m, Model::Layer& L, uint32_t layer, uint64_t n,
                           const RetrievalStep& step, const uint32_t* hostPositions,
                           std::vector<float>& hostQ, std::vector<float>& hostK,
                           std::vector<float>& hostV, std::vector<float>& rowsQ,
                           std::vector<float>& rowsK, std::vector<float>& rowsV,
                           RetrievalLayer& decided) {
  const auto& s = m->s;
  const uint64_t q = uint64_t{s.heads} * s.headDim, kv = uint64_t{s.kvHeads} * s.headDim;
  hostQ.resize(n * q);
  hostK.resize(n * kv);
  hostV.resize(n * kv);
  LIFL_CU(cudaMemcpy(hostQ.data(), m->qs.p, n * q * 4, cudaMemcpyDeviceToHost));
  LIFL_CU(cudaMemcpy(hostK.data(), m->ks.p, n * kv * 4, cudaMemcpyDeviceToHost));
  LIFL_CU(cudaMemcpy(hostV.data(), m->vs.p, n * kv * 4, cudaMemcpyDeviceToHost));
  rowsQ.clear();
  rowsK.clear();
  rowsV.clear();
  for (uint32_t r : step.rows) {
    rowsQ.insert(rowsQ.end(), hostQ.begin() + r * q, hostQ.begin() + (r + 1) * q);
    rowsK.insert(rowsK.end(), hostK.begin() + r * kv, hostK.begin() + (r + 1) * kv);
    rowsV.insert(rowsV.end(), hostV.begin() + r * kv, hostV.begin() + (r + 1) * kv);
  }
  decided.copies.clear();
  decided.lengths.assign(n * s.kvHeads, 0);
  for (uint64_t r = 0; r < n; ++r)  // rows that do not retrieve attend to their positions
    for (uint32_t h = 0; h < s.kvHeads; ++h)
      decided.lengths[r * s.kvHeads + h] = hostPositions[r] + 1;
  LIFL_TRY_STR(step.onLayer(layer, rowsQ.data(), rowsK.data(), rowsV.data(), decided));
  LIFL_TRY_STR(uploadF32(m->headLengths, decided.lengths.data(), decided.lengths.size() * 4));
  if (decided.copies.empty()) return "";
  LIFL_TRY_STR(
      uploadF32(m->copies, decided.copies.data(), decided.copies.size() * sizeof(WorkingSetCopy)));
  const auto count = static_cast<uint32_t>(decided.copies.size());
  return copyWorkingSet(m->kv(L), m->copies.as<WorkingSetCopy>(), count, m->tables.as<uint32_t>(),
                        m->rowTable.as<uint32_t>(), s.kvHeads, s.headDim);
}

/// Every kernel of one forward pass over `n` rows whose inputs are on the device (no copy
/// from the host, no allocation: a CUDA graph may capture it).
std::string launchForward(Model* m, uint64_t n, uint32_t logitCount, uint32_t maxContext,
                          bool prefill, const RetrievalStep* retrieval = nullptr,
                          const uint32_t* hostPositions = nullptr) {
  const auto& s = m->s;
  const uint64_t h = s.hidden, q = uint64_t{s.heads} * s.headDim,
                 kv = uint64_t{s.kvHeads} * s.headDim, inter = s.inter;
  float *x = m->x.as<float>(), *normed = m->normed.as<float>(), *proj = m->proj.as<float>();
  float *qs = m->qs.as<float>(), *attn = m->attn.as<float>(), *ks = m->ks.as<float>(),
        *vs = m->vs.as<float>(), *gate = m->gate.as<float>(), *up = m->up.as<float>();
  const auto* pos = m->positions.as<uint32_t>();
  LIFL_CU(launchDependent(embedKernel, grid(n * h), 256, x, m->embed.as<__nv_bfloat16>(),
                          m->tokens.as<uint32_t>(), n, h));
  Buffer* tc = s.tensorCores ? &m->bf16x : nullptr;  // --gemm cublas
  std::vector<float> hostQ, hostK, hostV, rowsQ, rowsK, rowsV;
  RetrievalLayer decided;
  for (uint32_t layer = 0; layer < m->layers.size(); ++layer) {
    auto& L = m->layers[layer];
    // The previous layer's MLP output joins the residual stream here, in the norm's kernel.
    if (layer == 0)
      LIFL_CU(launchDependent(rmsNormKernel, static_cast<unsigned>(n), 256, normed, nullptr, x,
                              L.inputNorm.as<float>(), h, s.eps));
    else
      LIFL_CU(launchDependent(rmsNormKernel, static_cast<unsigned>(n), 256, normed, x, proj,
                              L.inputNorm.as<float>(), h, s.eps));
    LIFL_TRY_STR(apply(L.qkv.outputs({qs, ks, vs}), normed, L.qkv, n, h, tc));
    LIFL_CU(launchDependent(ropeKernel, grid(n * (s.heads + s.kvHeads) * s.headDim / 2), 256, qs,
                            ks, n, s.heads, s.kvHeads, s.headDim, pos, m->invFreq.as<float>()));
    LIFL_TRY_STR(withKv(m->kv(L), [&](auto* kPages, auto* vPages) -> std::string {
      LIFL_CU(launchDependent(storeKvKernel<std::remove_pointer_t<decltype(kPages)>>, grid(n * kv),
                              256, kPages, vPages, ks, vs, m->rowPage.as<uint32_t>(),
                              m->rowSlot.as<uint32_t>(), n, s.kvHeads, s.headDim));
      return "";
    }));
    if (retrieval)
      LIFL_TRY_STR(retrievalLayer(m, L, layer, n, *retrieval, hostPositions, hostQ, hostK, hostV,
                                  rowsQ, rowsK, rowsV, decided));
    LIFL_TRY_STR(attend(attn, qs, static_cast<uint32_t>(n), pos, m->tables.as<uint32_t>(),
                        m->rowTable.as<uint32_t>(), maxContext, s.heads, s.kvHeads, s.headDim,
                        m->kv(L), prefill ? m->tables.as<uint32_t>() : nullptr,
                        retrieval ? m->headLengths.as<uint32_t>() : nullptr));
    LIFL_TRY_STR(apply(proj, attn, L.o, n, q, tc));
    LIFL_CU(launchDependent(rmsNormKernel, static_cast<unsigned>(n), 256, normed, x, proj,
                            L.postNorm.as<float>(), h, s.eps));
    LIFL_TRY_STR(apply(L.gateUp.outputs({gate, up}), normed, L.gateUp, n, h, tc));
    LIFL_CU(launchDependent(siluMulKernel, grid(n * inter), 256, gate, gate, up, n * inter));
    LIFL_TRY_STR(apply(proj, gate, L.down, n, inter, tc));
  }
  if (!m->layers.empty())  // the last MLP's output joins the residual stream
    LIFL_CU(launchDependent(addKernel, grid(n * h), 256, x, proj, n * h));
  // The head, over the rows that need logits only.
  LIFL_CU(launchDependent(gatherRowsKernel, grid(uint64_t{logitCount} * h), 256,
                          m->last.as<float>(), x, m->logitRows.as<uint32_t>(), logitCount, h));
  LIFL_CU(launchDependent(rmsNormKernel, logitCount, 256, m->last.as<float>(), nullptr,
                          m->last.as<float>(), m->norm.as<float>(), h, s.eps));
  LIFL_TRY_STR(linear(LinearOutputs::one(m->logits.as<float>(), s.vocab), m->last.as<float>(),
                      m->lmHead.as<__nv_bfloat16>(), logitCount, h, s.vocab));
  LIFL_CU(cudaGetLastError());
  return "";
}

/// Runs launchForward as a CUDA graph captured for this shape of step (captured on first use).
std::string launchAsGraph(Model* m, uint64_t n, uint32_t logitCount, uint32_t maxContext) {
  const uint32_t splitTokens = splitTokensFor(maxContext);
  std::vector<uintptr_t> key = {n,
                                logitCount,
                                (maxContext + splitTokens - 1) / splitTokens,
                                splitTokens,
                                reinterpret_cast<uintptr_t>(splitScratch().p),
                                reinterpret_cast<uintptr_t>(splitArrivals().p)};
  for (const Buffer* b : {&m->x, &m->normed, &m->qs, &m->ks, &m->vs, &m->attn, &m->proj, &m->gate,
                          &m->up, &m->logits, &m->last, &m->tokens, &m->positions, &m->rowPage,
                          &m->rowSlot, &m->tables, &m->rowTable, &m->logitRows})
    key.push_back(reinterpret_cast<uintptr_t>(b->p));
  auto found = m->graphs.find(key);
  if (found == m->graphs.end()) {
    if (m->graphs.size() >= 64) {  // buffers have moved or shapes vary: start over
      for (auto& [_, exec] : m->graphs) cudaGraphExecDestroy(exec);
      m->graphs.clear();
    }
    LIFL_CU(cudaStreamBeginCapture(m->stream, cudaStreamCaptureModeThreadLocal));
    const std::string why = launchForward(m, n, logitCount, maxContext, false);
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(m->stream, &graph);
    if (!why.empty()) {
      if (graph) cudaGraphDestroy(graph);
      return why;
    }
    if (ended != cudaSuccess) return failed(ended, "cudaStreamEndCapture");
    cudaGraphExec_t exec = nullptr;
    const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (made != cudaSuccess) return failed(made, "cudaGraphInstantiate");
    found = m->graphs.emplace(std::move(key), exec).first;
  }
  LIFL_CU(cudaGraphLaunch(found->second, m->stream));
  return "";
}

}  // namespace

std::string forward(Model* m, uint32_t rows, const uint32_t* tokens, const uint32_t* positions,
                    const uint32_t* seqOf, uint32_t sequences, const uint32_t* tableStart,
                    const uint32_t* tableLen, const uint32_t* tables, uint32_t tableEntries,
                    const uint32_t* logitRows, uint32_t logitCount, float* logits,
                    const RetrievalStep* retrieval, uint32_t* drawn, const Pick* picks) {
  const auto& s = m->s;
  const uint64_t n = rows, h = s.hidden, q = uint64_t{s.heads} * s.headDim,
                 kv = uint64_t{s.kvHeads} * s.headDim, inter = s.inter;
  std::vector<uint32_t> rowPage(n), rowSlot(n), rowTable(n);
  uint32_t maxContext = 0;
  // One sequence at consecutive positions (a prompt): the tiled prefill attention applies.
  bool prefill = sequences == 1 && n > 1;
  for (uint64_t r = 1; r < n && prefill; ++r) prefill = positions[r] == positions[r - 1] + 1;
  std::vector<bool> retrieves(n, false);
  if (retrieval)
    for (uint32_t r : retrieval->rows) {
      if (r >= n) return "forward: a retrieval row beyond the rows";
      retrieves[r] = true;
    }
  if (retrieval && prefill) return "forward: a retrieval step is one token per sequence";
  for (uint64_t r = 0; r < n; ++r) {
    const uint32_t seq = seqOf[r], pos = positions[r];
    maxContext = std::max(maxContext, pos + 1);
    rowTable[r] = tableStart[seq];
    if (retrieves[r]) {  // its K/V go to host memory; its pages hold the working set
      rowPage[r] = kNoPage;
      rowSlot[r] = 0;
      continue;
    }
    if (pos / kPageTokens >= tableLen[seq]) return "forward: a position beyond its block table";
    rowPage[r] = tables[tableStart[seq] + pos / kPageTokens];
    rowSlot[r] = pos % kPageTokens;
  }
  for (uint32_t j = 0; j < logitCount; ++j)
    if (logitRows[j] >= n) return "forward: a logit row beyond the rows";
  // Inputs and buffers first, on the default stream (ordered with the model's stream).
  LIFL_TRY_STR(uploadF32(m->tokens, tokens, n * 4));
  LIFL_TRY_STR(uploadF32(m->positions, positions, n * 4));
  LIFL_TRY_STR(uploadF32(m->rowPage, rowPage.data(), n * 4));
  LIFL_TRY_STR(uploadF32(m->rowSlot, rowSlot.data(), n * 4));
  LIFL_TRY_STR(uploadF32(m->rowTable, rowTable.data(), n * 4));
  LIFL_TRY_STR(uploadF32(m->tables, tables, size_t{tableEntries} * 4));
  LIFL_TRY_STR(uploadF32(m->logitRows, logitRows, size_t{logitCount} * 4));
  for (Buffer* b : {&m->x, &m->normed, &m->proj}) LIFL_TRY_STR(b->reserve(n * h * 4));
  for (Buffer* b : {&m->qs, &m->attn}) LIFL_TRY_STR(b->reserve(n * q * 4));
  for (Buffer* b : {&m->ks, &m->vs}) LIFL_TRY_STR(b->reserve(n * kv * 4));
  for (Buffer* b : {&m->gate, &m->up}) LIFL_TRY_STR(b->reserve(n * inter * 4));
  LIFL_TRY_STR(m->last.reserve(size_t{logitCount} * h * 4));
  LIFL_TRY_STR(m->logits.reserve(size_t{logitCount} * s.vocab * 4));
  LIFL_TRY_STR(reserveSplitScratch(rows, s.heads, s.kvHeads, s.headDim, maxContext));
  {
    StreamScope scope(m->stream);
    // A decode step (no prompt, no cuBLAS call) as a graph; the rest launched one by one.
    if (retrieval)  // the host decides between kernels: no graph
      LIFL_TRY_STR(launchForward(m, n, logitCount, maxContext, false, retrieval, positions));
    else if (!prefill && (n < kCublasFromRows || !s.tensorCores))
      LIFL_TRY_STR(launchAsGraph(m, n, logitCount, maxContext));
    else
      LIFL_TRY_STR(launchForward(m, n, logitCount, maxContext, prefill));
    if (drawn && logitCount > 0) {
      LIFL_TRY_STR(uploadF32(m->picks, picks, size_t{logitCount} * sizeof(Pick)));
      LIFL_TRY_STR(m->drawn.reserve(size_t{logitCount} * 4));
      LIFL_CU(launchPickTokens(m->drawn.as<uint32_t>(), m->logits.as<float>(), logitCount, s.vocab,
                               m->picks.as<Pick>(), currentStream()));
    }
  }
  if (!drawn)
    LIFL_CU(
        cudaMemcpy(logits, m->logits.p, size_t{logitCount} * s.vocab * 4, cudaMemcpyDeviceToHost));
  else if (logitCount > 0)
    LIFL_CU(cudaMemcpy(drawn, m->drawn.p, size_t{logitCount} * 4, cudaMemcpyDeviceToHost));
  LIFL_CU(cudaGetLastError());
  return "";
}

std::string timeDecodeAttention(uint32_t batch, uint32_t heads, uint32_t kvHeads, uint32_t headDim,
                                uint32_t context, KvDtype dtype, int reps, bool inGraph,
                                double* seconds) {
  const uint32_t pagesPerSeq = (context + kPageTokens - 1) / kPageTokens;
  const uint64_t kvDim = uint64_t{kvHeads} * headDim;
  Buffer k, v, qs, out, pos, tables, rowTable;
  const size_t pageBytes = size_t{batch} * pagesPerSeq * kPageTokens * kvDim * kvBytes(dtype);
  LIFL_TRY_STR(k.reserve(pageBytes));
  LIFL_TRY_STR(v.reserve(pageBytes));
  LIFL_CU(cudaMemset(k.p, 0, pageBytes));
  LIFL_CU(cudaMemset(v.p, 0, pageBytes));
  LIFL_TRY_STR(qs.reserve(size_t{batch} * heads * headDim * 4));
  LIFL_CU(cudaMemset(qs.p, 0, size_t{batch} * heads * headDim * 4));
  LIFL_TRY_STR(out.reserve(size_t{batch} * heads * headDim * 4));
  std::vector<uint32_t> p(batch, context - 1), t(size_t{batch} * pagesPerSeq), rt(batch);
  for (uint32_t b = 0; b < batch; ++b) {
    rt[b] = b * pagesPerSeq;
    for (uint32_t i = 0; i < pagesPerSeq; ++i) t[size_t{b} * pagesPerSeq + i] = b * pagesPerSeq + i;
  }
  LIFL_TRY_STR(uploadF32(pos, p.data(), p.size() * 4));
  LIFL_TRY_STR(uploadF32(tables, t.data(), t.size() * 4));
  LIFL_TRY_STR(uploadF32(rowTable, rt.data(), rt.size() * 4));
  auto once = [&] {
    return attend(out.as<float>(), qs.as<float>(), batch, pos.as<uint32_t>(), tables.as<uint32_t>(),
                  rowTable.as<uint32_t>(), context, heads, kvHeads, headDim,
                  KvRef{k.p, v.p, dtype});
  };
  return timeLaunches(reps, once, seconds, inGraph);
}

__global__ void emptyKernel() { afterPrerequisites(); }

std::string timeLaunchFloor(uint32_t blocks, uint32_t threads, int reps, bool inGraph,
                            double* seconds) {
  auto once = [&]() -> std::string {
    LIFL_CU(launchDependent(emptyKernel, blocks, threads));
    return "";
  };
  return timeLaunches(reps, once, seconds, inGraph);
}

std::string timeLinear(int kind, uint64_t rows, uint64_t in, uint64_t out, int reps, bool inGraph,
                       bool coldWeights, double* seconds) {
  Buffer x, xb, y;
  LIFL_TRY_STR(x.reserve(rows * in * 4));
  LIFL_TRY_STR(xb.reserve(rows * in * 2));
  LIFL_TRY_STR(y.reserve(rows * out * 4));
  LIFL_CU(cudaMemset(x.p, 0, rows * in * 4));
  LIFL_CU(cudaMemset(xb.p, 0, rows * in * 2));
  const uint32_t bits = kind == 0 ? 16 : static_cast<uint32_t>(kind);
  const uint64_t padded = (out + kQuantTileRows - 1) / kQuantTileRows * kQuantTileRows;
  const size_t weightBytes = bits == 16 ? out * in * 2 : padded * in * bits / 8;
  // Cold: as many copies as make 4 x the L2 cache, used in turn, so that each launch reads
  // its weights from HBM as a decode step does (a model's weights are many times the L2);
  // one copy read again and again stays in the 50 MB L2 where it is smaller.
  int l2 = 0, device = 0;
  LIFL_CU(cudaGetDevice(&device));
  LIFL_CU(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
  const size_t copies = coldWeights ? std::max<size_t>(1, 4 * size_t(l2) / weightBytes + 1) : 1;
  std::deque<Weight> weights(copies);
  for (Weight& w : weights) {
    w.bits = bits;
    w.out = out;
    w.starts = {0};
    w.widths = {out};
    LIFL_TRY_STR(w.data.reserve(weightBytes));
    LIFL_CU(cudaMemset(w.data.p, 1, weightBytes));
    if (bits != 16) {
      LIFL_TRY_STR(w.scales.reserve(padded * (in / 128) * 4));
      LIFL_CU(cudaMemset(w.scales.p, 0, padded * (in / 128) * 4));
    }
  }
  size_t next = 0;
  auto once = [&]() -> std::string {
    const Weight& w = weights[next++ % copies];
    if (kind != 0) return apply(y.as<float>(), x.as<float>(), w, rows, in);
    return gemmBf16(y.as<float>(), xb.as<__nv_bfloat16>(), w.data.as<__nv_bfloat16>(), rows, in,
                    out);
  };
  return timeLaunches(reps, once, seconds, inGraph);
}

// ---------------------------------------------------------------- single kernels (tests)

std::string linearQuant(float* y, const float* x, uint32_t bits, const int8_t* q,
                        const float* scales, uint64_t rows, uint64_t in, uint64_t out) {
  Buffer dx, dy;
  Weight w;
  LIFL_TRY_STR(uploadF32(dx, x, rows * in * 4));
  LIFL_TRY_STR(uploadWeight(w, HostLinear{nullptr, bits, q, scales}, out, in));
  LIFL_TRY_STR(dy.reserve(rows * out * 4));
  LIFL_TRY_STR(apply(dy.as<float>(), dx.as<float>(), w, rows, in));
  LIFL_CU(cudaMemcpy(y, dy.p, rows * out * 4, cudaMemcpyDeviceToHost));
  return "";
}

std::string linearQuantStacked(float* const* ys, const float* x, uint32_t bits,
                               const int8_t* const* q, const float* const* scales,
                               const uint64_t* outs, size_t count, uint64_t rows, uint64_t in) {
  if (count == 0 || count > LinearOutputs::kMaxParts) return "1 to 3 stacked parts";
  std::vector<HostLinear> hosts;
  std::vector<std::pair<const HostLinear*, uint64_t>> parts;
  for (size_t p = 0; p < count; ++p) hosts.push_back(HostLinear{nullptr, bits, q[p], scales[p]});
  for (size_t p = 0; p < count; ++p) parts.emplace_back(&hosts[p], outs[p]);
  Buffer dx;
  Weight w;
  LIFL_TRY_STR(uploadF32(dx, x, rows * in * 4));
  LIFL_TRY_STR(uploadStacked(w, parts, in));
  std::vector<Buffer> dy(count);
  LinearOutputs o;
  for (size_t p = 0; p < count; ++p) {
    LIFL_TRY_STR(dy[p].reserve(rows * outs[p] * 4));
    o.add(dy[p].as<float>(), w.starts[p], w.widths[p]);
  }
  LIFL_TRY_STR(apply(o, dx.as<float>(), w, rows, in));
  for (size_t p = 0; p < count; ++p)
    LIFL_CU(cudaMemcpy(ys[p], dy[p].p, rows * outs[p] * 4, cudaMemcpyDeviceToHost));
  return "";
}

std::string rmsNorm(float* out, const float* x, const float* w, uint64_t rows, uint64_t n,
                    float eps) {
  Buffer dx, dw, dout;
  LIFL_TRY_STR(uploadF32(dx, x, rows * n * 4));
  LIFL_TRY_STR(uploadF32(dw, w, n * 4));
  LIFL_TRY_STR(dout.reserve(rows * n * 4));
  rmsNormKernel<<<static_cast<unsigned>(rows), 256, 0, currentStream()>>>(
      dout.as<float>(), nullptr, dx.as<float>(), dw.as<float>(), n, eps);
  LIFL_CU(cudaMemcpy(out, dout.p, rows * n * 4, cudaMemcpyDeviceToHost));
  return "";
}

std::string pickTokens(uint32_t* out, const float* logits, uint64_t rows, uint32_t vocab,
                       const Pick* picks) {
  Buffer dl, dp, dout;
  LIFL_TRY_STR(uploadF32(dl, logits, rows * vocab * 4));
  LIFL_TRY_STR(uploadF32(dp, picks, rows * sizeof(Pick)));
  LIFL_TRY_STR(dout.reserve(rows * 4));
  LIFL_CU(launchPickTokens(dout.as<uint32_t>(), dl.as<float>(), static_cast<uint32_t>(rows), vocab,
                           dp.as<Pick>(), currentStream()));
  LIFL_CU(cudaMemcpy(out, dout.p, rows * 4, cudaMemcpyDeviceToHost));
  return "";
}

std::string rope(float* x, uint64_t rows, uint32_t heads, uint32_t headDim,
                 const uint32_t* positions, double theta) {
  std::vector<float> inv(headDim / 2);
  for (uint32_t i = 0; i < inv.size(); ++i)
    inv[i] = static_cast<float>(1.0 / std::pow(theta, (2.0 * i) / headDim));
  Buffer dx, dp, di;
  LIFL_TRY_STR(uploadF32(dx, x, rows * heads * headDim * 4));
  LIFL_TRY_STR(uploadF32(dp, positions, rows * 4));
  LIFL_TRY_STR(uploadF32(di, inv.data(), inv.size() * 4));
  ropeKernel<<<grid(rows * heads * headDim / 2), 256, 0, currentStream()>>>(
      dx.as<float>(), nullptr, rows, heads, 0, headDim, dp.as<uint32_t>(), di.as<float>());
  LIFL_CU(cudaMemcpy(x, dx.p, rows * heads * headDim * 4, cudaMemcpyDeviceToHost));
  return "";
}

std::string siluAndMul(float* out, const float* gate, const float* up, uint64_t n) {
  Buffer dg, du;
  LIFL_TRY_STR(uploadF32(dg, gate, n * 4));
  LIFL_TRY_STR(uploadF32(du, up, n * 4));
  siluMulKernel<<<grid(n), 256, 0, currentStream()>>>(dg.as<float>(), dg.as<float>(),
                                                      du.as<float>(), n);
  LIFL_CU(cudaMemcpy(out, dg.p, n * 4, cudaMemcpyDeviceToHost));
  return "";
}

std::string linearBf16(float* y, const float* x, const float* w, uint64_t rows, uint64_t in,
                       uint64_t out) {
  Buffer dx, dw, dy;
  LIFL_TRY_STR(uploadF32(dx, x, rows * in * 4));
  LIFL_TRY_STR(uploadBf16(dw, w, out * in));
  LIFL_TRY_STR(dy.reserve(rows * out * 4));
  LIFL_TRY_STR(linear(LinearOutputs::one(dy.as<float>(), out), dx.as<float>(),
                      dw.as<__nv_bfloat16>(), rows, in, out));
  LIFL_CU(cudaMemcpy(y, dy.p, rows * out * 4, cudaMemcpyDeviceToHost));
  return "";
}

namespace {

/// One query row's attention over per-KV-head position lists of a paged cache in host memory
/// (the working-set copy of a retrieval step, then the split attention).
struct RetrievedAttention {
  Buffer kWs, vWs, table, copies, headLen, position, rowTable;
  uint32_t maxLen = 0, count = 0, kvHeads = 0, headDim = 0;
  KvDtype dtype = KvDtype::F32;  ///< of the working set's pages

  /// kHost, vHost: the cache's pages as the device addresses them (registered host memory).
  std::string prepare(const uint32_t* blockTable, const std::vector<std::vector<uint32_t>>& lists,
                      uint32_t kvHeadCount, uint32_t dim, const float* kHost, const float* vHost,
                      KvDtype workingSet) {
    kvHeads = kvHeadCount;
    headDim = dim;
    dtype = workingSet;
    const uint64_t kvDim = uint64_t{kvHeads} * headDim;
    std::vector<WorkingSetCopy> all;
    std::vector<uint32_t> len;
    maxLen = 0;
    for (uint32_t h = 0; h < lists.size(); ++h) {
      len.push_back(static_cast<uint32_t>(lists[h].size()));
      maxLen = std::max(maxLen, len.back());
      for (uint32_t i = 0; i < lists[h].size(); ++i) {
        const uint32_t p = lists[h][i];
        const uint64_t at =
            (uint64_t{blockTable[p / kPageTokens]} * kPageTokens + p % kPageTokens) * kvDim;
        all.push_back({kHost + at, vHost + at, i, 0, static_cast<uint16_t>(h)});
      }
    }
    if (maxLen == 0) return "retrieved attention: every list is empty";
    count = static_cast<uint32_t>(all.size());
    const uint32_t pages = (maxLen + kPageTokens - 1) / kPageTokens;
    std::vector<uint32_t> identity(pages);
    for (uint32_t p = 0; p < pages; ++p) identity[p] = p;
    const uint32_t last = maxLen - 1, zero = 0;
    LIFL_TRY_STR(kWs.reserve(size_t{pages} * kPageTokens * kvDim * kvBytes(dtype)));
    LIFL_TRY_STR(vWs.reserve(size_t{pages} * kPageTokens * kvDim * kvBytes(dtype)));
    LIFL_TRY_STR(uploadF32(table, identity.data(), identity.size() * 4));
    LIFL_TRY_STR(uploadF32(copies, all.data(), all.size() * sizeof(WorkingSetCopy)));
    LIFL_TRY_STR(uploadF32(headLen, len.data(), len.size() * 4));
    LIFL_TRY_STR(uploadF32(position, &last, 4));
    return uploadF32(rowTable, &zero, 4);
  }

  /// @param gather false: attend over the rows copied before (a step that re-selects nothing)
  std::string launch(float* out, const float* q, uint32_t heads, bool gather = true) {
    LIFL_TRY_STR(reserveSplitScratch(1, heads, kvHeads, headDim, maxLen));
    const KvRef ws{kWs.p, vWs.p, dtype};
    if (gather)
      LIFL_TRY_STR(copyWorkingSet(ws, copies.as<WorkingSetCopy>(), count, table.as<uint32_t>(),
                                  rowTable.as<uint32_t>(), kvHeads, headDim));
    return attend(out, q, 1, position.as<uint32_t>(), table.as<uint32_t>(), rowTable.as<uint32_t>(),
                  maxLen, heads, kvHeads, headDim, ws, nullptr, headLen.as<uint32_t>());
  }
};

/// Host memory registered with the device for the scope (RAII), and its device address.
struct Registered {
  void* host = nullptr;
  void* device = nullptr;
  std::string why;
  Registered(const void* p, size_t bytes) : host(const_cast<void*>(p)) {
    if (cudaError_t e = cudaHostRegister(host, bytes, cudaHostRegisterMapped); e != cudaSuccess) {
      why = failed(e, "cudaHostRegister");
      host = nullptr;
    } else if (cudaError_t g = cudaHostGetDevicePointer(&device, host, 0); g != cudaSuccess) {
      why = failed(g, "cudaHostGetDevicePointer");
    }
  }
  ~Registered() {
    if (host) cudaHostUnregister(host);
  }
};

}  // namespace

std::string attentionAtHost(float* out, const float* q, uint32_t heads, uint32_t kvHeads,
                            uint32_t headDim, const float* kHost, const float* vHost,
                            uint64_t pageFloats, const uint32_t* blockTable,
                            const std::vector<std::vector<uint32_t>>& positions, KvDtype dtype) {
  Registered k(kHost, pageFloats * 4), v(vHost, pageFloats * 4);
  if (!k.why.empty()) return k.why;
  if (!v.why.empty()) return v.why;
  RetrievedAttention r;
  LIFL_TRY_STR(r.prepare(blockTable, positions, kvHeads, headDim, static_cast<float*>(k.device),
                         static_cast<float*>(v.device), dtype));
  Buffer dq, dout;
  LIFL_TRY_STR(uploadF32(dq, q, size_t{heads} * headDim * 4));
  LIFL_TRY_STR(dout.reserve(size_t{heads} * headDim * 4));
  LIFL_TRY_STR(r.launch(dout.as<float>(), dq.as<float>(), heads));
  LIFL_CU(cudaMemcpy(out, dout.p, size_t{heads} * headDim * 4, cudaMemcpyDeviceToHost));
  return "";
}

std::string timeRetrievedAttention(uint32_t heads, uint32_t kvHeads, uint32_t headDim,
                                   uint32_t context, uint32_t rowsPerHead, bool gather,
                                   KvDtype dtype, int reps, double* seconds) {
  const uint64_t kvDim = uint64_t{kvHeads} * headDim;
  const uint32_t pages = (context + kPageTokens - 1) / kPageTokens;
  const size_t bytes = size_t{pages} * kPageTokens * kvDim * 4;
  float *k = nullptr, *v = nullptr;
  LIFL_CU(cudaHostAlloc(&k, bytes, cudaHostAllocMapped));
  std::unique_ptr<float, cudaError_t (*)(void*)> ownK(k, cudaFreeHost);
  LIFL_CU(cudaHostAlloc(&v, bytes, cudaHostAllocMapped));
  std::unique_ptr<float, cudaError_t (*)(void*)> ownV(v, cudaFreeHost);
  std::memset(k, 0, bytes);
  std::memset(v, 0, bytes);
  std::vector<uint32_t> table(pages);
  for (uint32_t p = 0; p < pages; ++p) table[p] = p;
  // Each head's rows spread over the context, as clusters of 16 positions would be.
  std::vector<std::vector<uint32_t>> lists(kvHeads);
  for (uint32_t h = 0; h < kvHeads; ++h)
    for (uint32_t i = 0; i < rowsPerHead; ++i)
      lists[h].push_back(static_cast<uint32_t>(
          (uint64_t{i / 16} * context / std::max(1u, rowsPerHead / 16) + i % 16 + h) % context));
  float *dk = nullptr, *dv = nullptr;
  LIFL_CU(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dk), k, 0));
  LIFL_CU(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dv), v, 0));
  RetrievedAttention r;
  LIFL_TRY_STR(r.prepare(table.data(), lists, kvHeads, headDim, dk, dv, dtype));
  Buffer dq, dout;
  LIFL_TRY_STR(dq.reserve(size_t{heads} * headDim * 4));
  LIFL_CU(cudaMemset(dq.p, 0, size_t{heads} * headDim * 4));
  LIFL_TRY_STR(dout.reserve(size_t{heads} * headDim * 4));
  LIFL_TRY_STR(r.launch(dout.as<float>(), dq.as<float>(), heads));
  return timeLaunches(
      reps, [&] { return r.launch(dout.as<float>(), dq.as<float>(), heads, gather); }, seconds);
}

namespace {

/// Pages in the CPU's layout ([page][slot][kvHeads][headDim]) rearranged into the device's
/// (kvRowAt).
std::vector<float> devicePages(const float* host, uint64_t pageFloats, uint32_t kvHeads,
                               uint32_t headDim) {
  std::vector<float> pages(pageFloats);
  const uint64_t kvDim = uint64_t{kvHeads} * headDim;
  for (uint64_t row = 0; row < pageFloats / kvDim; ++row)
    for (uint32_t h = 0; h < kvHeads; ++h)
      std::copy_n(
          host + row * kvDim + uint64_t{h} * headDim, headDim,
          pages.begin() + kvRowAt(row / kPageTokens, row % kPageTokens, h, kvHeads, headDim));
  return pages;
}

}  // namespace

std::string attention(float* out, const float* q, uint64_t rows, const uint32_t* positions,
                      uint32_t heads, uint32_t kvHeads, uint32_t headDim, const float* kPages,
                      const float* vPages, uint64_t pageFloats, const uint32_t* blockTable,
                      uint32_t blocks, KvDtype dtype) {
  if (pageFloats % (uint64_t{kPageTokens} * kvHeads * headDim))
    return "attention: the pages hold whole pages";
  Buffer dq, dk, dv, dp, dt, drt, dout;
  LIFL_TRY_STR(uploadF32(dq, q, rows * heads * headDim * 4));
  const auto k = devicePages(kPages, pageFloats, kvHeads, headDim);
  const auto v = devicePages(vPages, pageFloats, kvHeads, headDim);
  if (dtype == KvDtype::Bf16) {
    LIFL_TRY_STR(uploadBf16(dk, k.data(), pageFloats));
    LIFL_TRY_STR(uploadBf16(dv, v.data(), pageFloats));
  } else {
    LIFL_TRY_STR(uploadF32(dk, k.data(), pageFloats * 4));
    LIFL_TRY_STR(uploadF32(dv, v.data(), pageFloats * 4));
  }
  LIFL_TRY_STR(uploadF32(dp, positions, rows * 4));
  LIFL_TRY_STR(uploadF32(dt, blockTable, size_t{blocks} * 4));
  std::vector<uint32_t> rowTable(rows, 0);
  LIFL_TRY_STR(uploadF32(drt, rowTable.data(), rows * 4));
  LIFL_TRY_STR(dout.reserve(rows * heads * headDim * 4));
  uint32_t maxContext = 0;
  for (uint64_t r = 0; r < rows; ++r) maxContext = std::max(maxContext, positions[r] + 1);
  bool consecutive = rows > 1;
  for (uint64_t r = 1; r < rows && consecutive; ++r)
    consecutive = positions[r] == positions[r - 1] + 1;
  LIFL_TRY_STR(attend(dout.as<float>(), dq.as<float>(), static_cast<uint32_t>(rows),
                      dp.as<uint32_t>(), dt.as<uint32_t>(), drt.as<uint32_t>(), maxContext, heads,
                      kvHeads, headDim, KvRef{dk.p, dv.p, dtype},
                      consecutive ? dt.as<uint32_t>() : nullptr));
  LIFL_CU(cudaMemcpy(out, dout.p, rows * heads * headDim * 4, cudaMemcpyDeviceToHost));
  return "";
}

}  // namespace lifl::gpu::cuda::llm
