// KV retrieval for long sequences, in the manner of LouisKV (docs/llm.md), on the CPU path:
// a decode step attends to the sink tokens, a window of recent tokens and the units whose
// centroid the query scores highest, up to a token budget. The prompt's keys are clustered per
// layer and KV head (k-means, about 16 tokens a cluster); generated tokens that leave the
// recent window become segment units at the next retrieval. Units are re-selected only when
// the query moves: the mean cosine of consecutive queries (over the heads) below tau.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "lifl/common/error.h"
#include "lifl/gpu/device.h"
#include "lifl/gpu/llm.h"

namespace lifl::llm {

struct RetrievalConfig {
  uint32_t budget = 0;  ///< tokens of selected units per KV head; 0: off
  double tau = 0.7;     ///< re-select when the queries' mean cosine falls below this
  uint32_t sinks = 4;
  uint32_t recent = 32;
  uint32_t clusterTokens = 16;
  bool enabled() const { return budget > 0; }
  /// Prompts shorter than the sinks and the window attend to everything: no retrieval.
  bool worthwhile(uint32_t promptLength) const { return promptLength >= sinks + recent; }
  /// "budget=N,tau=T" (the --kv-retrieval option).
  static Result<RetrievalConfig> parse(std::string_view spec);
};

class SequenceRetrieval {
 public:
  SequenceRetrieval(const RetrievalConfig& config, uint32_t layers, uint32_t heads,
                    uint32_t kvHeads, uint32_t headDim);
  /// Clusters every layer's prompt keys (positions [sinks, promptLength)) per KV head with
  /// the kernel library's k-means on `backend`; `cache(layer)` is a layer's pages.
  Result<void> clusterPrompt(const std::function<kernels::llm::KvPages(uint32_t layer)>& cache,
                             std::span<const uint32_t> table, uint32_t promptLength,
                             gpu::Backend backend);
  /// The positions each KV head attends to for query q (heads * headDim) at position pos.
  const std::vector<std::vector<uint32_t>>& select(uint32_t layer, const float* q, uint32_t pos,
                                                   const kernels::llm::KvPages& cache,
                                                   std::span<const uint32_t> table);
  /// Selections made (each layer's count), for the figures and tests.
  uint64_t retrievals() const { return retrievals_; }
  /// Seconds the host spent deciding a GPU path's retrieval steps (the engine adds them), for
  /// the figures.
  double hostSeconds() const { return hostSeconds_; }
  void addHostSeconds(double s) { hostSeconds_ += s; }
  /// Whether the layer's last select() re-selected units.
  bool reselected(uint32_t layer) const { return layers_[layer].reselected; }
  /// A KV head's rows fixed since the layer's last selection (sinks and chosen units before
  /// the window, ascending); a step attends to them and then to the window [pos + 1 - recent,
  /// pos].
  const std::vector<uint32_t>& fixedRows(uint32_t layer, uint32_t kvh) const {
    return layers_[layer].chosen[kvh];
  }
  uint32_t recent() const { return config_.recent; }

 private:
  /// A KV head's units, each array contiguous (a selection streams them, megabytes a layer at
  /// long contexts): centroids [unit][headDim], so that scoring them is one vectorised
  /// matrix-vector product, and the units' positions one after another, unit u's at
  /// [starts[u], starts[u + 1]).
  struct Units {
    std::vector<float> centroids;
    std::vector<uint32_t> positions;
    std::vector<uint32_t> starts{0};
    size_t size() const { return starts.size() - 1; }
    std::span<const uint32_t> of(size_t u) const {
      return {positions.data() + starts[u], starts[u + 1] - starts[u]};
    }
    void add(std::span<const float> centroid, std::span<const uint32_t> members) {
      centroids.insert(centroids.end(), centroid.begin(), centroid.end());
      positions.insert(positions.end(), members.begin(), members.end());
      starts.push_back(static_cast<uint32_t>(positions.size()));
    }
  };
  struct Layer {
    std::vector<Units> units;  ///< per KV head
    std::vector<float> lastQ;  ///< the previous step's query
    bool selected = false;
    bool reselected = false;
    std::vector<std::vector<uint32_t>> chosen;  ///< per KV head: the fixed rows (fixedRows)
    std::vector<std::vector<uint32_t>> attend;  ///< per KV head: this step's positions
  };
  static constexpr uint32_t kKmeansRounds = 4;
  Result<void> clusterLayer(uint32_t layer, const kernels::llm::KvPages& cache,
                            std::span<const uint32_t> table, gpu::Backend backend);
  /// Adds a unit of `positions` (its centroid their keys' mean) to a KV head's.
  void addUnit(Units& to, const kernels::llm::KvPages& cache, std::span<const uint32_t> table,
               uint32_t kvh, std::span<const uint32_t> positions) const;

  RetrievalConfig config_;
  uint32_t heads_, kvHeads_, headDim_;
  uint32_t segmentStart_ = 0;  ///< first generated position not yet in a unit
  uint32_t promptLength_ = 0;
  std::vector<Layer> layers_;
  uint64_t retrievals_ = 0;
  double hostSeconds_ = 0;
};

}  // namespace lifl::llm
