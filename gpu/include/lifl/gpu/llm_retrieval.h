// KV retrieval in a GPU forward pass (docs/llm.md): rows of a decode step whose K/V live in
// pinned host memory and who attend to a working set of rows in their device pages. The
// forward pass asks the host, per layer, which rows to copy into the working sets; the engine
// (functions/llm/engine.cc) answers with SequenceRetrieval's selection.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace lifl::gpu::llm {

/// One KV head's K and V of one position, read from host memory (device addresses of the
/// position's head-0 K and V rows; pinned and mapped) into row `dest` of batch row `row`'s
/// pages.
struct WorkingSetCopy {
  const float* k;
  const float* v;
  uint32_t dest;
  uint16_t row, head;
};

/// What the host decides for one layer of a retrieval step.
struct RetrievalLayer {
  std::vector<WorkingSetCopy> copies;
  /// [rows][kvHeads]: the rows of its pages each head attends to; filled in with position + 1
  /// for the rows that do not retrieve, before the host is asked.
  std::vector<uint32_t> lengths;
};

/// The batch rows that retrieve, and the host's decision per layer: onLayer gets those rows'
/// q, k, v after RoPE ([j][heads * headDim], [j][kvHeads * headDim], j indexing `rows`),
/// returns "" or why it failed.
struct RetrievalStep {
  std::vector<uint32_t> rows;
  std::function<std::string(uint32_t layer, const float* q, const float* k, const float* v,
                            RetrievalLayer& out)>
      onLayer;
};

}  // namespace lifl::gpu::llm
