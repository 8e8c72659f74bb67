// The LLM kernels of the shared library: their CPU reference implementations (the CUDA ones
// come behind the same calls). Layouts follow Hugging Face's Llama: row-major activations
// [rows][features], weights [out][in], RoPE in the rotate-half (NeoX) layout, and a KV cache
// in pages of kPageTokens tokens, each row holding every KV head of one token.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "lifl/gpu/llm_pick.h"

namespace lifl::kernels::llm {

inline constexpr uint32_t kPageTokens = 16;

/// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, over rows of n values (fp32 throughout).
void rmsNorm(float* out, const float* x, const float* w, uint64_t rows, uint64_t n, float eps);
/// The fused form between blocks: residual += x, then out = rmsNorm(residual).
void addRmsNorm(float* out, float* residual, const float* x, const float* w, uint64_t rows,
                uint64_t n, float eps);

/// Rotary embedding in place on rows of `heads` heads of headDim values, the row r at
/// position positions[r]: pairs (i, i + headDim/2) rotated by positions[r] * theta^(-2i/headDim).
void rope(float* x, uint64_t rows, uint32_t heads, uint32_t headDim, const uint32_t* positions,
          double theta);

/// out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)).
void siluAndMul(float* out, const float* gate, const float* up, uint64_t n);

/// y[r][o] = sum_i x[r][i] * w[o][i]: activations times a [out][in] weight.
void matmul(float* y, const float* x, const float* w, uint64_t rows, uint64_t in, uint64_t out);

/// A [out][in] weight quantised symmetrically per group of kQuantGroup values along `in`
/// (W8A16 / W4A16, the layout of Marlin's and Tilus's inputs before their offline shuffle):
/// scale[o][g] = max |w| of the group / qmax (127, or 7 for int4); q = round(w / scale)
/// clamped to [-qmax, qmax]. int4 values are packed two per byte, the even index in the low
/// nibble, as two's complement. `in` must be a multiple of kQuantGroup.
inline constexpr uint32_t kQuantGroup = 128;
struct QuantMatrix {
  uint32_t bits = 8;  ///< 8 or 4
  uint64_t out = 0, in = 0;
  std::vector<int8_t> q;      ///< int8: out * in; int4: out * in / 2 packed
  std::vector<float> scales;  ///< out * in / kQuantGroup
  int8_t at(uint64_t o, uint64_t i) const {
    if (bits == 8) return q[o * in + i];
    const auto byte = static_cast<uint8_t>(q[(o * in + i) / 2]);
    const int v = (i % 2 == 0) ? (byte & 0xF) : (byte >> 4);
    return static_cast<int8_t>(v >= 8 ? v - 16 : v);
  }
};
QuantMatrix quantize(const float* w, uint64_t out, uint64_t in, uint32_t bits);
/// y[r][o] = sum_g scale[o][g] * sum_{i in g} q[o][i] * x[r][i]: the quantised GEMV (GEMM for
/// rows > 1), dequantising on the fly.
void matmulQuant(float* y, const float* x, const QuantMatrix& w, uint64_t rows);

/// x rounded to BF16, to nearest even (NaN kept): what a BF16 KV page holds of x.
float roundToBf16(float x);

/// One layer's KV cache: pages of kPageTokens rows of kvHeads * headDim values, K and V apart.
struct KvPages {
  float* k = nullptr;
  float* v = nullptr;
  uint32_t kvHeads = 0, headDim = 0;
  uint64_t rowFloats() const { return uint64_t{kvHeads} * headDim; }
  float* kRow(uint32_t page, uint32_t slot) const {
    return k + (uint64_t{page} * kPageTokens + slot) * rowFloats();
  }
  float* vRow(uint32_t page, uint32_t slot) const {
    return v + (uint64_t{page} * kPageTokens + slot) * rowFloats();
  }
};

/// Causal grouped-query attention of one sequence over its cached positions: query row r
/// (heads * headDim values, at position positions[r]) attends to positions 0..positions[r]
/// of the sequence, whose token t sits in page blockTable[t / kPageTokens], slot
/// t % kPageTokens. Query head h reads KV head h / (heads / kvHeads). Scores are scaled by
/// 1/sqrt(headDim); the softmax is taken in fp32 with the running maximum subtracted.
void attention(float* out, const float* q, uint64_t rows, const uint32_t* positions, uint32_t heads,
               const KvPages& cache, std::span<const uint32_t> blockTable);

/// The same attention for one query row over explicit positions: KV head g reads the cached
/// positions positions[g] (ascending), query head h the set of its KV head (KV retrieval).
void attentionAt(float* out, const float* q, uint32_t heads, const KvPages& cache,
                 std::span<const uint32_t> blockTable,
                 std::span<const std::vector<uint32_t>> positions);

/// k-means of n keys per KV head, as KV retrieval clusters a prompt: keys [n][kvHeads *
/// headDim]. The centroids start at the keys c * n / clusters and go through `rounds` rounds of
/// Lloyd on squared distance: each key to its nearest centroid (ties to the lowest index), then
/// each centroid the mean of its keys, summed in ascending order (kept where it has none).
/// owner [kvHeads][n]: the last round's assignment; centroids [kvHeads][clusters][headDim].
void kmeans(const float* keys, uint32_t n, uint32_t kvHeads, uint32_t headDim, uint32_t clusters,
            uint32_t rounds, uint32_t* owner, float* centroids);

/// The index of the first maximum of `logits` (greedy decoding's token).
uint32_t argmax(const float* logits, uint32_t vocab);

/// The next uniform double in [0, 1) of a splitmix64 generator of state `rng` (53 bits).
double nextDraw(uint64_t& rng);
/// A request's Pick for its next token: a draw from its generator where it samples.
Pick nextPick(float temperature, uint32_t topK, float topP, uint64_t& rng);

/// The token `pick` picks from logits (the CPU reference of the device's picking).
uint32_t pickToken(const float* logits, uint32_t vocab, const Pick& pick);

/// pickToken(logits, vocab, nextPick(temperature, topK, topP, rng)).
uint32_t sample(const float* logits, uint32_t vocab, float temperature, uint32_t topK, float topP,
                uint64_t& rng);

}  // namespace lifl::kernels::llm
