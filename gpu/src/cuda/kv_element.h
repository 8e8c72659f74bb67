// The paged KV cache's element type on the device, fp32 or BF16 (Shape::kv): the kernels
// that read or write pages are templates over it, and their launchers pick the instance with
// withKv. Attention reads four elements at a time as a float4 and computes in fp32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "lifl/gpu/llm_shape.h"

namespace lifl::gpu::cuda::llm {

using gpu::llm::KvDtype;

/// One layer's K and V pages as the launchers pass them.
struct KvRef {
  void* k = nullptr;
  void* v = nullptr;
  KvDtype dtype = KvDtype::F32;
};

constexpr size_t kvBytes(KvDtype d) { return d == KvDtype::Bf16 ? 2 : 4; }

/// f(p) with `p` as a pointer to the element type `dtype` names.
template <typename F>
auto withElements(void* p, KvDtype dtype, F&& f) {
  if (dtype == KvDtype::Bf16) return f(static_cast<__nv_bfloat16*>(p));
  return f(static_cast<float*>(p));
}

/// f(k, v) with the pages as pointers to their element type.
template <typename F>
auto withKv(const KvRef& kv, F&& f) {
  return withElements(kv.k, kv.dtype,
                      [&](auto* k) { return f(k, static_cast<decltype(k)>(kv.v)); });
}

/// Four consecutive elements as one load: 16 bytes of fp32, 8 of BF16.
template <typename T>
struct KvQuad;
template <>
struct KvQuad<float> {
  using Raw = float4;
};
template <>
struct KvQuad<__nv_bfloat16> {
  using Raw = uint2;
};
template <typename T>
using KvRaw4 = typename KvQuad<T>::Raw;

__device__ __forceinline__ float4 widen(float4 r) { return r; }
/// BF16 is fp32's upper half: each element widens by a shift (the lower one first).
__device__ __forceinline__ float4 widen(uint2 r) {
  return make_float4(__uint_as_float(r.x << 16), __uint_as_float(r.x & 0xffff0000u),
                     __uint_as_float(r.y << 16), __uint_as_float(r.y & 0xffff0000u));
}

__device__ __forceinline__ float kvToFloat(float x) { return x; }
__device__ __forceinline__ float kvToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T kvFromFloat(float x);
template <>
__device__ __forceinline__ float kvFromFloat<float>(float x) {
  return x;
}
/// Round to nearest even, as kernels::llm::roundToBf16 on the CPU.
template <>
__device__ __forceinline__ __nv_bfloat16 kvFromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

/// x as another of the two element types (the same type: x itself).
template <typename To, typename From>
__device__ __forceinline__ To convertKv(From x) {
  if constexpr (std::is_same_v<To, From>)
    return x;
  else if constexpr (std::is_same_v<To, float>)
    return kvToFloat(x);
  else
    return kvFromFloat<To>(x);
}

}  // namespace lifl::gpu::cuda::llm
