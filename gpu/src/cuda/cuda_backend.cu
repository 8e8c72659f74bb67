// CUDA kernels of the shared library: the N-input fused fold acc (= or +=) sum_k w_k x_k for
// F32, F16, BF16 and blockwise int8 inputs into an fp32 accumulator, the final scale, and the
// finite check. Memory-bound: each thread moves 16 bytes of every input per step (float4 /
// 8 halves / 16 int8) when all pointers are 16-byte aligned, else 1 element; the accumulator
// is read and written once per launch for up to kMaxInputs inputs.
//
// Inputs are wherever the caller has them. Device memory is read directly; host memory that
// the store registered (registerHost: pinned and mapped) is read by the kernel through its
// device mapping, one pass over PCIe and no staging buffer (gpu.md: 95% of a pinned copy);
// other host memory is copied into a device buffer first (pageable: slow, never the store).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cuda_api.h"
#include "cuda_check.h"

namespace lifl::gpu::cuda {
namespace {

constexpr int kMaxInputs = 8;
enum Kind : int { kF32 = 0, kF16 = 1, kBF16 = 2, kI8 = 3 };

struct Inputs {
  const void* x[kMaxInputs];
  const float* scales[kMaxInputs];
  float w[kMaxInputs];
  int count;
  uint64_t cols;    ///< int8: row length
  uint64_t base;    ///< int8: the tensor index of x[k][0] (a chunk's start), for its scales
  uint32_t blocks;  ///< int8: scales per row
  uint32_t block;   ///< int8: values per scale
  int blockShift;   ///< int8: log2(block) when rows hold whole blocks (the scale index is then
                    ///< the value index >> blockShift), else -1
};

template <int K>
__device__ __forceinline__ float scalarAt(const Inputs& in, int k, uint64_t i) {
  if constexpr (K == kF32) {
    return static_cast<const float*>(in.x[k])[i];
  } else if constexpr (K == kF16) {
    return __half2float(static_cast<const __half*>(in.x[k])[i]);
  } else if constexpr (K == kBF16) {
    return __bfloat162float(static_cast<const __nv_bfloat16*>(in.x[k])[i]);
  } else {
    const uint64_t at = in.base + i, row = at / in.cols, col = at - row * in.cols;
    return in.scales[k][row * in.blocks + col / in.block] *
           static_cast<float>(static_cast<const int8_t*>(in.x[k])[i]);
  }
}

/// Values per 16-byte load of one input.
template <int K>
constexpr int kVec = K == kF32  ? 4
                     : K == kI8 ? 16
                                : 8;

// 16 bytes of an F32, F16 or BF16 input, widened into out[kVec<K>].
template <int K>
__device__ __forceinline__ void widen(const uint4& raw, float* out) {
  if constexpr (K == kF32) {
    const float4 f = *reinterpret_cast<const float4*>(&raw);
    out[0] = f.x, out[1] = f.y, out[2] = f.z, out[3] = f.w;
  } else if constexpr (K == kF16) {
    const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __half22float2(h[j]);
      out[2 * j] = f.x, out[2 * j + 1] = f.y;
    }
  } else if constexpr (K == kBF16) {
    const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __bfloat1622float2(b[j]);
      out[2 * j] = f.x, out[2 * j + 1] = f.y;
    }
  }
}

// Vectorised: n / kVec vectors, the remainder by the scalar kernel. Each input's weight is
// applied as in the CPU kernels (w * x, or (w * scale) * q for int8, one FMA into the sum).
template <int K>
__global__ void foldVectors(float* __restrict__ acc, Inputs in, uint64_t vectors, bool first) {
  constexpr int V = kVec<K>;
  const uint64_t stride = uint64_t{gridDim.x} * blockDim.x;
  for (uint64_t v = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; v < vectors; v += stride) {
    float a[V];
    float4* a4 = reinterpret_cast<float4*>(acc) + v * (V / 4);
    if (first) {
#pragma unroll
      for (int j = 0; j < V; ++j) a[j] = 0.f;
    } else {
#pragma unroll
      for (int j = 0; j < V / 4; ++j) {
        const float4 f = a4[j];
        a[4 * j] = f.x, a[4 * j + 1] = f.y, a[4 * j + 2] = f.z, a[4 * j + 3] = f.w;
      }
    }
    // Every input's 16 bytes are loaded before any is summed: up to 8 loads in flight per
    // thread instead of one at a time.
    uint4 raw[kMaxInputs];
#pragma unroll
    for (int k = 0; k < kMaxInputs; ++k)
      if (k < in.count) raw[k] = static_cast<const uint4*>(in.x[k])[v];
    if constexpr (K == kI8) {
      // The 16 values share a block (cols and block are multiples of 16), so one scale per
      // input, at an index computed once for all inputs (64-bit division is slow here). Each
      // folds as the CPU kernels do, (w * scale) * q.
      const uint64_t firstValue = in.base + v * 16;
      uint64_t scaleAt;
      if (in.blockShift >= 0) {
        scaleAt = firstValue >> in.blockShift;
      } else {
        const uint64_t row = firstValue / in.cols;
        scaleAt = row * in.blocks + (firstValue - row * in.cols) / in.block;
      }
#pragma unroll
      for (int k = 0; k < kMaxInputs; ++k) {
        if (k >= in.count) break;
        const float ws = in.w[k] * in.scales[k][scaleAt];
        const int8_t* q = reinterpret_cast<const int8_t*>(&raw[k]);
#pragma unroll
        for (int j = 0; j < V; ++j) a[j] = fmaf(ws, static_cast<float>(q[j]), a[j]);
      }
    } else {
#pragma unroll
      for (int k = 0; k < kMaxInputs; ++k) {
        if (k >= in.count) break;
        float x[V];
        widen<K>(raw[k], x);
#pragma unroll
        for (int j = 0; j < V; ++j) a[j] = fmaf(in.w[k], x[j], a[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < V / 4; ++j)
      a4[j] = make_float4(a[4 * j], a[4 * j + 1], a[4 * j + 2], a[4 * j + 3]);
  }
}

template <int K>
__global__ void foldScalars(float* __restrict__ acc, Inputs in, uint64_t begin, uint64_t n,
                            bool first) {
  const uint64_t stride = uint64_t{gridDim.x} * blockDim.x;
  for (uint64_t i = begin + uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    float a = first ? 0.f : acc[i];
    for (int k = 0; k < in.count; ++k) {
      if constexpr (K == kI8) {
        const uint64_t at = in.base + i, row = at / in.cols;
        const float ws = in.w[k] * in.scales[k][row * in.blocks + (at - row * in.cols) / in.block];
        a = fmaf(ws, static_cast<float>(static_cast<const int8_t*>(in.x[k])[i]), a);
      } else {
        a = fmaf(in.w[k], scalarAt<K>(in, k, i), a);
      }
    }
    acc[i] = a;
  }
}

__global__ void scaleKernel(float* __restrict__ out, const float* __restrict__ acc, uint64_t n,
                            float scale, const float* __restrict__ base) {
  const uint64_t stride = uint64_t{gridDim.x} * blockDim.x;
  for (uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = base ? fmaf(acc[i], scale, base[i]) : acc[i] * scale;
}

template <class T, T Mask>
__global__ void nonFiniteKernel(const T* __restrict__ x, uint64_t n,
                                unsigned long long* __restrict__ count) {
  unsigned long long bad = 0;
  const uint64_t stride = uint64_t{gridDim.x} * blockDim.x;
  for (uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride)
    bad += (x[i] & Mask) == Mask;
  for (int off = 16; off > 0; off /= 2) bad += __shfl_down_sync(0xffffffffu, bad, off);
  if ((threadIdx.x & 31) == 0 && bad) atomicAdd(count, bad);
}

int multiprocessors() {
  static const int sms = [] {
    int device = 0, count = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
      return 1;
    return count;
  }();
  return sms;
}

unsigned gridFor(uint64_t work) {
  const uint64_t blocks = (work + 255) / 256;
  return static_cast<unsigned>(std::clamp<uint64_t>(blocks, 1, uint64_t(multiprocessors()) * 16));
}

/// A pointer the device can read `bytes` at: device memory and registered host memory as
/// they are (the latter through its mapping), other host memory copied into `staged`.
class Resolver {
 public:
  ~Resolver() {
    for (void* p : staged_) cudaFree(p);
  }
  std::string resolve(const void* p, size_t bytes, const void** out) {
    if ((*out = deviceAddress(p))) return "";
    void* d = nullptr;
    LIFL_TRY_STR(stage(bytes, &d));
    LIFL_CU(cudaMemcpy(d, p, bytes, cudaMemcpyHostToDevice));
    *out = d;
    return "";
  }
  /// True for host memory registered with the device (the store's segment).
  static bool registered(const void* p) {
    const auto attr = attributesOf(p);
    return attr.type == cudaMemoryTypeHost && attr.devicePointer;
  }
  /// Where output for host memory `p` is written: mapped memory directly; other host memory
  /// through a device buffer copied back by finish().
  std::string writable(float* p, uint64_t n, float** out) {
    if ((*out = static_cast<float*>(const_cast<void*>(deviceAddress(p))))) return "";
    void* d = nullptr;
    LIFL_TRY_STR(stage(n * sizeof(float), &d));
    copyBack_ = {p, static_cast<float*>(d), n};
    *out = static_cast<float*>(d);
    return "";
  }
  std::string finish() {
    LIFL_CU(cudaDeviceSynchronize());
    if (copyBack_.host)
      LIFL_CU(cudaMemcpy(copyBack_.host, copyBack_.device, copyBack_.n * sizeof(float),
                         cudaMemcpyDeviceToHost));
    return "";
  }

 private:
  static cudaPointerAttributes attributesOf(const void* p) {
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
      cudaGetLastError();  // clear the error state the failed query leaves
      attr.type = cudaMemoryTypeUnregistered;
    }
    return attr;
  }
  /// The address the device reads `p` at without a copy (device memory as it is, registered
  /// host memory through its mapping), or null.
  static const void* deviceAddress(const void* p) {
    const auto attr = attributesOf(p);
    if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) return p;
    if (attr.type == cudaMemoryTypeHost && attr.devicePointer) return attr.devicePointer;
    return nullptr;
  }
  /// A device buffer freed with the resolver.
  std::string stage(size_t bytes, void** out) {
    LIFL_CU(cudaMalloc(out, bytes));
    staged_.push_back(*out);
    return "";
  }
  struct CopyBack {
    float* host = nullptr;
    float* device = nullptr;
    uint64_t n = 0;
  };
  std::vector<void*> staged_;
  CopyBack copyBack_;
};

int kindOf(const kernels::FoldInput& in) {
  if (in.scales) return kI8;
  return in.dtype == DType::F32 ? kF32 : in.dtype == DType::F16 ? kF16 : kBF16;
}

uint64_t bytesOf(const kernels::FoldInput& in, uint64_t n) {
  return in.scales ? n : n * dtypeSize(in.dtype);
}

template <int K>
std::string launch(float* acc, const Inputs& in, uint64_t n, bool first, cudaStream_t stream = 0) {
  constexpr int V = kVec<K>;
  bool aligned = reinterpret_cast<uintptr_t>(acc) % 16 == 0;
  for (int k = 0; k < in.count; ++k) aligned &= reinterpret_cast<uintptr_t>(in.x[k]) % 16 == 0;
  if constexpr (K == kI8) aligned &= in.cols % 16 == 0 && in.block % 16 == 0 && in.base % 16 == 0;
  const uint64_t vectors = aligned ? n / V : 0;
  if (vectors) foldVectors<K><<<gridFor(vectors), 256, 0, stream>>>(acc, in, vectors, first);
  if (vectors * V < n)
    foldScalars<K><<<gridFor(n - vectors * V), 256, 0, stream>>>(acc, in, vectors * V, n, first);
  LIFL_CU(cudaGetLastError());
  return "";
}

std::string launchKind(int kind, float* acc, const Inputs& in, uint64_t n, bool first,
                       cudaStream_t stream) {
  return kind == kF32    ? launch<kF32>(acc, in, n, first, stream)
         : kind == kF16  ? launch<kF16>(acc, in, n, first, stream)
         : kind == kBF16 ? launch<kBF16>(acc, in, n, first, stream)
                         : launch<kI8>(acc, in, n, first, stream);
}

int hostInputMode = 0;              ///< 0 auto, 1 zero-copy, 2 pipelined (setHostInputs)
uint64_t pipelineFromBytes = 0;     ///< auto: pipelined from this many input bytes per launch
uint64_t stageBytes = 64ull << 20;  ///< each staging buffer

// The pipelined alternative to zero-copy for registered host inputs: chunks of every input
// copied with cudaMemcpyAsync into one of 3 device staging buffers, each on its own stream,
// the fold of chunk j running while chunk j+1 is copied. Stream order keeps a buffer from
// being overwritten before its fold has read it.
class Pipeline {
 public:
  static constexpr int kStages = 3;
  std::string ready() {
    if (buffers_[0] && bytes_ == stageBytes) return "";
    LIFL_CU(cudaDeviceSynchronize());  // a resize: nothing may still use the old buffers
    for (int s = 0; s < kStages; ++s) {
      if (!streams_[s]) LIFL_CU(cudaStreamCreateWithFlags(&streams_[s], cudaStreamNonBlocking));
      if (buffers_[s]) cudaFree(buffers_[s]);
      buffers_[s] = nullptr;
      LIFL_CU(cudaMalloc(&buffers_[s], stageBytes));
    }
    bytes_ = stageBytes;
    return "";
  }
  std::string fold(float* acc, const Inputs& host, int kind, uint64_t n, bool first) {
    if (auto why = ready(); !why.empty()) return why;
    const uint64_t valueBytes = kind == kF32 ? 4 : kind == kI8 ? 1 : 2;
    uint64_t chunk = bytes_ / (valueBytes * host.count) / 4096 * 4096;
    if (kind == kI8 && host.cols % 16 == 0) chunk = chunk / host.cols * host.cols;
    if (chunk == 0) return "the pipeline's staging buffers are too small";
    int stage = 0;
    for (uint64_t start = 0; start < n; start += chunk, stage = (stage + 1) % kStages) {
      const uint64_t len = std::min(chunk, n - start);
      Inputs dev = host;
      dev.base = start;
      auto* buffer = static_cast<std::byte*>(buffers_[stage]);
      for (int k = 0; k < host.count; ++k) {
        void* dst = buffer + k * chunk * valueBytes;
        LIFL_CU(cudaMemcpyAsync(dst, static_cast<const std::byte*>(host.x[k]) + start * valueBytes,
                                len * valueBytes, cudaMemcpyHostToDevice, streams_[stage]));
        dev.x[k] = dst;
      }
      if (auto why = launchKind(kind, acc + start, dev, len, first, streams_[stage]); !why.empty())
        return why;
    }
    return "";
  }

 private:
  cudaStream_t streams_[kStages] = {};
  void* buffers_[kStages] = {};
  uint64_t bytes_ = 0;
};

Pipeline& pipeline() {
  static Pipeline p;  // per process, for its lifetime
  return p;
}

bool pipelined(uint64_t bytes) {
  return hostInputMode == 2 ||
         (hostInputMode == 0 && pipelineFromBytes && bytes >= pipelineFromBytes);
}

}  // namespace

void setHostInputs(int mode, uint64_t fromBytes, uint64_t stage) {
  hostInputMode = mode;
  pipelineFromBytes = fromBytes;
  stageBytes = stage;
}

Probe probe() {
  Probe p;
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    p.why = cudaGetErrorString(e);
    cudaGetLastError();
    return p;
  }
  if (count == 0) {
    p.why = "no CUDA device";
    return p;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    p.why = "cannot read the device's properties";
    return p;
  }
  p.usable = true;
  p.devices = count;
  p.multiprocessors = prop.multiProcessorCount;
  p.device = prop.name;
  return p;
}

std::string allocate(uint64_t floats, float** device) {
  void* p = nullptr;
  LIFL_CU(cudaMalloc(&p, std::max<uint64_t>(floats, 1) * sizeof(float)));
  *device = static_cast<float*>(p);
  return "";
}

void release(float* device) {
  if (device) cudaFree(device);
}

std::string upload(const void* data, size_t bytes, void** device) {
  void* p = nullptr;
  LIFL_CU(cudaMalloc(&p, std::max<size_t>(bytes, 1)));
  const cudaError_t e = cudaMemcpy(p, data, bytes, cudaMemcpyHostToDevice);
  if (e != cudaSuccess) {
    cudaFree(p);
    return failed(e, "cudaMemcpy");
  }
  *device = p;
  return "";
}

std::string copyIn(void* device, const void* host, size_t bytes) {
  LIFL_CU(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice));
  return "";
}

void releaseBytes(void* device) {
  if (device) cudaFree(device);
}

std::string fold(float* acc, const kernels::FoldInput* inputs, size_t count, uint64_t n,
                 bool first) {
  Resolver resolver;
  size_t k = 0;
  while (k < count) {
    // One launch per run of inputs of the same format (int8: the same layout), at most
    // kMaxInputs: the accumulator crosses HBM once per launch.
    Inputs in{};
    const int kind = kindOf(inputs[k]);
    in.cols = std::max<uint64_t>(inputs[k].cols, 1);
    in.block = std::max<uint32_t>(inputs[k].block, 1);
    in.blocks = static_cast<uint32_t>((in.cols + in.block - 1) / in.block);
    in.blockShift = -1;
    if (in.cols % in.block == 0 && (in.block & (in.block - 1)) == 0)
      in.blockShift = __builtin_ctz(in.block);
    // Registered host inputs (the store) are read through the mapping, or copied in by the
    // pipeline, by size (setHostInputs).
    bool staged = true;
    uint64_t groupBytes = 0;
    for (size_t j = k; j < count && j < k + kMaxInputs; ++j) {
      staged &= Resolver::registered(inputs[j].values);
      groupBytes += bytesOf(inputs[j], n);
    }
    staged &= pipelined(groupBytes);
    while (k < count && in.count < kMaxInputs && kindOf(inputs[k]) == kind &&
           (kind != kI8 || (inputs[k].cols == in.cols && inputs[k].block == in.block))) {
      const void* x = inputs[k].values;
      std::string why = staged ? "" : resolver.resolve(inputs[k].values, bytesOf(inputs[k], n), &x);
      if (!why.empty()) return why;
      in.x[in.count] = x;
      if (kind == kI8) {
        const void* s = nullptr;
        why = resolver.resolve(inputs[k].scales, (n / in.cols) * in.blocks * sizeof(float), &s);
        if (!why.empty()) return why;
        in.scales[in.count] = static_cast<const float*>(s);
      }
      in.w[in.count] = inputs[k].weight;
      in.count++;
      k++;
    }
    std::string why =
        staged ? pipeline().fold(acc, in, kind, n, first) : launchKind(kind, acc, in, n, first, 0);
    if (!why.empty()) return why;
    first = false;
  }
  return resolver.finish();  // the inputs may be freed once this returns
}

std::string scaleInto(float* out, const float* acc, uint64_t n, double scale, const float* base) {
  Resolver resolver;
  float* dst = nullptr;
  std::string why = resolver.writable(out, n, &dst);
  if (!why.empty()) return why;
  const void* b = nullptr;
  if (base) {
    why = resolver.resolve(base, n * sizeof(float), &b);
    if (!why.empty()) return why;
  }
  scaleKernel<<<gridFor(n), 256>>>(dst, acc, n, static_cast<float>(scale),
                                   static_cast<const float*>(b));
  LIFL_CU(cudaGetLastError());
  return resolver.finish();
}

std::string copyOut(float* out, const float* acc, uint64_t n) {
  LIFL_CU(cudaMemcpy(out, acc, n * sizeof(float), cudaMemcpyDefault));
  return "";
}

std::string unregisterHost(void* base) {
  LIFL_CU(cudaHostUnregister(base));
  return "";
}

std::string registerHost(void* base, size_t bytes) {
  const cudaError_t e =
      cudaHostRegister(base, bytes, cudaHostRegisterMapped | cudaHostRegisterPortable);
  if (e == cudaErrorHostMemoryAlreadyRegistered) {
    cudaGetLastError();
    return "";
  }
  if (e != cudaSuccess) return failed(e, "cudaHostRegister");
  return "";
}

std::string countNonFinite(const void* x, DType dtype, uint64_t n, uint64_t* count) {
  Resolver resolver;
  const void* p = nullptr;
  std::string why = resolver.resolve(x, n * dtypeSize(dtype), &p);
  if (!why.empty()) return why;
  unsigned long long* d = nullptr;
  LIFL_CU(cudaMalloc(&d, sizeof *d));
  LIFL_CU(cudaMemset(d, 0, sizeof *d));
  if (dtype == DType::F32)
    nonFiniteKernel<uint32_t, 0x7f800000u>
        <<<gridFor(n), 256>>>(static_cast<const uint32_t*>(p), n, d);
  else if (dtype == DType::F16)
    nonFiniteKernel<uint16_t, uint16_t{0x7c00}>
        <<<gridFor(n), 256>>>(static_cast<const uint16_t*>(p), n, d);
  else
    nonFiniteKernel<uint16_t, uint16_t{0x7f80}>
        <<<gridFor(n), 256>>>(static_cast<const uint16_t*>(p), n, d);
  unsigned long long host = 0;
  const cudaError_t launched = cudaGetLastError();
  const cudaError_t copied = cudaMemcpy(&host, d, sizeof host, cudaMemcpyDeviceToHost);
  cudaFree(d);
  if (launched != cudaSuccess) return failed(launched, "nonFiniteKernel");
  if (copied != cudaSuccess) return failed(copied, "cudaMemcpy");
  *count = host;
  return resolver.finish();
}

}  // namespace lifl::gpu::cuda
