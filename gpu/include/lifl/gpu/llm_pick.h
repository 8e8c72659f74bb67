// How a row's token is picked from its logits (kernels::llm::pickToken, and the device's
// picking in gpu/src/cuda/pick_tokens.cu): one header for both sides, C++17 for nvcc.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define LIFL_PICK_RULE __host__ __device__ constexpr
#else
#define LIFL_PICK_RULE constexpr
#endif

namespace lifl::kernels::llm {

/// Whether top_p cuts the candidates to a nucleus (0 and 1 keep them all).
LIFL_PICK_RULE bool hasNucleus(float topP) { return topP > 0.0f && topP < 1.0f; }

/// How one row's token is picked, laid out alike on the host and the device (a decode step
/// uploads one array of them):
/// - temperature 0: the first maximum (greedy);
/// - else the candidates in order (logit descending, ties to the lower index) are cut to the
///   topK first (0: all), then to the shortest prefix of those whose exp((logit - max) / T)
///   sums to topP times theirs (top_p 1: no cut); `draw` (in [0, 1)) times the sum over
///   those in play picks the first token, in index order, at which their running sum
///   exceeds it.
struct Pick {
  float temperature = 0;
  uint32_t topK = 0;
  float topP = 1;
  uint32_t reserved = 0;
  double draw = 0;
};

}  // namespace lifl::kernels::llm
