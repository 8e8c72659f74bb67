// Decode attention over the paged KV cache (Flash-Decoding): the context is cut into splits,
// one block per (row, KV head, split) computes the split's online-softmax partial for every
// query head of the KV head's group, and a merge combines the splits by their log-sum-exp.
// Each K/V row is read once for the whole group, whatever the context length.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kv_element.h"

namespace lifl::gpu::cuda::llm {

/// Tokens per KV page (the block table maps page index -> page).
inline constexpr uint32_t kPageTokens = 16;

/// Where the elements of KV head `kvh` of row `slot` of page `page` start in a layer's K (or
/// V) pages. A page holds its rows head by head, [kvHeads][kPageTokens][headDim], so that
/// one KV head's rows of a page are contiguous (2 KB of BF16 at 64 dims): decode attention
/// reads them at 4-6 points more of the bandwidth than rows of all heads interleaved
/// (docs/benchmarks.md).
__host__ __device__ constexpr uint64_t kvRowAt(uint64_t page, uint32_t slot, uint32_t kvh,
                                               uint32_t kvHeads, uint32_t headDim) {
  return ((page * kvHeads + kvh) * kPageTokens + slot) * uint64_t{headDim};
}

/// Positions per split: 256 keeps enough blocks busy at short contexts (128 measured slower
/// at 4K), 512 halves the partials at long ones (measured: bench_attention,
/// docs/benchmarks.md).
constexpr uint32_t splitTokensFor(uint32_t maxContext) { return maxContext < 16384 ? 256 : 512; }

/// Bytes of the split partials.
constexpr size_t splitPartialBytes(uint32_t rows, uint32_t heads, uint32_t headDim,
                                   uint32_t maxContext) {
  const uint32_t splitTokens = splitTokensFor(maxContext);
  return size_t{rows} * heads * ((maxContext + splitTokens - 1) / splitTokens) * (headDim + 2) * 4;
}
/// Bytes of the arrival counters, one per (row, KV head): zero when allocated, and left zero
/// by each call.
constexpr size_t splitArrivalBytes(uint32_t rows, uint32_t kvHeads) {
  return size_t{rows} * kvHeads * 4;
}

/// out[rows][heads][headDim] = softmax(q k^T / sqrt(headDim)) v for one query row per
/// sequence, on the current stream.
/// @param tables, rowTable row r's block table starts at tables[rowTable[r]]
/// @param headLengths per (row, KV head), the rows it attends to (a working set of retrieved
///        rows); null: positions[row] + 1. maxContext bounds them.
/// @param partial device scratch of splitPartialBytes(rows, heads, headDim, maxContext)
/// @param arrivals device counters of splitArrivalBytes(rows, kvHeads), zero
std::string splitDecodeAttention(float* out, float* partial, uint32_t* arrivals, const float* q,
                                 uint32_t rows, const uint32_t* positions, const uint32_t* tables,
                                 const uint32_t* rowTable, uint32_t maxContext, uint32_t heads,
                                 uint32_t kvHeads, uint32_t headDim, const KvRef& kv,
                                 const uint32_t* headLengths);

}  // namespace lifl::gpu::cuda::llm
