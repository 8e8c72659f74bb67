// The forward pass of a Llama decoder over a paged KV cache, on the kernel library's CPU
// reference (the GPU path comes behind the same kernels). Sequences own pages of
// kernels::llm::kPageTokens tokens from the engine's pool; a prefill runs a prompt's tokens
// at once, a decode step one token of each of several sequences (continuous batching).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "lifl/common/error.h"
#include "lifl/gpu/llm.h"
#include "lifl/gpu/llm_device.h"
#include "model.h"
#include "retrieval.h"

namespace lifl::llm {

/// A retrieving sequence's K/V on the GPU path: every position in pinned host memory,
/// [layer][K, V][capacity][kvHeads * headDim]; its device pages hold only its working set.
struct HostKv {
  gpu::llm::PinnedMemory memory;
  uint32_t capacity = 0;           ///< positions per (layer, K/V) block
  std::vector<uint32_t> identity;  ///< the block table of a block
};

struct Sequence {
  std::vector<uint32_t> pages;                   ///< the block table
  uint32_t length = 0;                           ///< tokens in the cache
  std::shared_ptr<SequenceRetrieval> retrieval;  ///< KV retrieval's state, when it is on
  std::shared_ptr<HostKv> hostKv;                ///< GPU path with retrieval: the full K/V
};

class Engine {
 public:
  /// @param maxPages the KV pool, shared by all sequences (per layer, K and V)
  /// @param gpu run on the GPU when one is present (weights in BF16 there, or quantised as
  ///        loaded), else on the CPU reference
  /// @param tensorCores on the GPU, linears of 8 rows and more through cuBLAS on BF16
  ///        activations (faster prefill and batched decode, less precise)
  /// @param kv how the pages hold K and V (--kv-cache). On the GPU, BF16 pages take half the
  ///        memory; the CPU keeps fp32 pages holding the values rounded to BF16, so that both
  ///        paths compute the same.
  Engine(const LlamaModel& model, uint32_t maxPages, bool gpu = false, bool tensorCores = false,
         gpu::llm::KvDtype kv = gpu::llm::KvDtype::Bf16);
  /// KV retrieval for the sequences prefilled (or handed over) from now on. On the GPU a
  /// sequence moves to it at its first decode step: its K/V to pinned host memory, its pages
  /// down to a working set (sinks, selected units, the recent window).
  void setRetrieval(const RetrievalConfig& config);
  /// Where it runs: "cuda" or "cpu".
  const char* device() const { return device_ ? "cuda" : "cpu"; }

  const LlamaConfig& config() const { return model_.config; }
  /// Runs `tokens` of one sequence (a prompt, or one generated token) and appends their K/V
  /// to its pages. Returns the logits of its last token ([vocab]).
  Result<std::vector<float>> prefill(Sequence& seq, std::span<const uint32_t> tokens);
  /// One token for each sequence, in one pass through the weights: logits [batch][vocab].
  Result<std::vector<float>> decode(std::span<Sequence* const> seqs,
                                    std::span<const uint32_t> tokens);
  /// As decode, but returns each sequence's next token, picked as kernels::llm::pickToken
  /// picks it with picks[i]. On the GPU it is picked there, and only the tokens come back.
  Result<std::vector<uint32_t>> decodeTokens(std::span<Sequence* const> seqs,
                                             std::span<const uint32_t> tokens,
                                             std::span<const kernels::llm::Pick> picks);
  /// Bytes of a hand-off of `length` tokens: every layer's K then V rows, each value as the
  /// cache holds it (BF16: 2 bytes, the upper half of its fp32 pattern; f32: 4).
  uint64_t kvBytes(uint32_t length) const {
    return uint64_t{length} * 2 * model_.config.layers * rowBytes();
  }
  /// Copies a sequence's cache out ([layer][K, V][token][kvHeads * headDim], kvBytes), to hand
  /// it from a prefill instance to a decode instance of the same --kv-cache.
  void exportKv(const Sequence& seq, void* out) const;
  /// Takes a sequence's cache in (the layout of exportKv) into pages of this pool. `in` may
  /// be unaligned.
  Result<void> importKv(Sequence& seq, const void* in, uint32_t length);
  /// Gives a finished sequence's pages back to the pool.
  void release(Sequence& seq);
  uint32_t freePages() const { return static_cast<uint32_t>(free_.size()); }
  uint32_t totalPages() const { return totalPages_; }
  static uint32_t pagesFor(uint32_t tokens) {
    return (tokens + kernels::llm::kPageTokens - 1) / kernels::llm::kPageTokens;
  }
  /// Takes the pages for `tokens` more tokens of the sequence now, so that its later decode
  /// steps cannot run out (the decode stage reserves a request's whole length on admission).
  Result<void> reserve(Sequence& seq, uint32_t tokens);

 private:
  struct Row {
    Sequence* seq;
    uint32_t token;
    uint32_t position;
  };
  /// bad_token for a row whose token is not in the vocabulary.
  Result<void> checkTokens(const std::vector<Row>& rows) const;
  /// A decode step: one row a sequence (its page reserved), run(rows, logit rows: all of
  /// them), then each sequence one token longer.
  template <class T, class Run>
  Result<T> step(std::span<Sequence* const> seqs, std::span<const uint32_t> tokens, Run&& run);
  Result<std::vector<float>> forward(const std::vector<Row>& rows,
                                     const std::vector<size_t>& logitRows);
  /// run(batch) for the device's batch of `rows` (DeviceModel::forward or forwardTokens).
  template <class Run>
  auto onDevice(const std::vector<Row>& rows, const std::vector<size_t>& logitRows, Run&& run);

  Result<void> startRetrieval(Sequence& seq);
  /// GPU path: the sequence's K/V to host memory, clustered, its pages cut to a working set.
  Result<void> toWorkingSet(Sequence& seq);
  /// A layer's view of a retrieving sequence's host K/V (the CPU kernels' page layout).
  kernels::llm::KvPages hostView(const Sequence& seq, uint32_t layer) const;
  /// The host's part of a GPU retrieval step for `rows` (indices into `batch`).
  gpu::llm::RetrievalStep retrievalStep(const std::vector<Row>& batch, std::vector<uint32_t> rows);
  /// Values of a K or V row (every KV head of one token), and its bytes in a hand-off.
  uint64_t rowValues() const { return uint64_t{model_.config.kvHeads} * model_.config.headDim; }
  uint64_t rowBytes() const { return rowValues() * (kv_ == gpu::llm::KvDtype::Bf16 ? 2 : 4); }
  /// Writes a K or V row into host memory as the pages hold it (rounded where they are BF16).
  void storeRow(float* to, const float* from) const;
  /// A row of the CPU's pages to a hand-off (in the cache's element type), and back.
  void exportRow(std::byte* to, const float* from) const;
  void importRow(float* to, const std::byte* from) const;

  const LlamaModel& model_;
  gpu::llm::KvDtype kv_;
  uint32_t totalPages_ = 0;
  RetrievalConfig retrieval_;
  std::unique_ptr<gpu::llm::DeviceModel> device_;  ///< the GPU path, when it runs there
  std::vector<std::vector<float>> k_, v_;  ///< CPU path, per layer: maxPages * kPageTokens rows
  std::vector<uint32_t> free_;
};

}  // namespace lifl::llm
