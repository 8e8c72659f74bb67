// What a Llama's device model is made from: its shape and its host weights. Plain types
// only, shared by the C++ API (llm_device.h) and the CUDA side (gpu/src/cuda/llm_api.h).
#pragma once

#include <cstdint>

namespace lifl::gpu::llm {

/// How the paged KV cache holds K and V (--kv-cache): BF16 (the default), half the memory
/// and half the bytes decode attention reads; or fp32, which the CPU reference matches to
/// fp32 rounding. Attention computes in fp32 either way.
enum class KvDtype : uint8_t { Bf16, F32 };

struct Shape {
  uint32_t hidden = 0, inter = 0, layers = 0, heads = 0, kvHeads = 0, headDim = 0, vocab = 0;
  uint32_t maxPages = 0;  ///< KV pages per layer
  float eps = 1e-6f;
  double theta = 10000.0;
  /// --gemm cublas (the default): linears of 8 rows and more (prefill, batched decode) on the
  /// tensor cores,
  /// their activations rounded to BF16; else every linear keeps fp32 activations.
  bool tensorCores = false;
  KvDtype kv = KvDtype::F32;
};

/// A linear layer's [out][in] weight in host memory: fp32 (held as BF16 on the device), or
/// quantised (kernels::llm::QuantMatrix's layout: int8, or int4 packed two per byte, with
/// one fp32 scale per 128 inputs).
struct HostLinear {
  const float* weight = nullptr;
  uint32_t bits = 16;  ///< 16: BF16 from `weight`; 8 or 4: `q` and `scales`
  const int8_t* q = nullptr;
  const float* scales = nullptr;
};

struct HostLayer {
  const float *inputNorm, *postNorm;
  HostLinear q, k, v, o, gate, up, down;
};

}  // namespace lifl::gpu::llm
