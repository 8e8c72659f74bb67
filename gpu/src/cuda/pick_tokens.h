// Picking each logit row's token on the device (kernels::llm::pickToken's rule), so that a
// decode step reads back 4 bytes a row instead of the vocabulary's logits.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "lifl/gpu/llm_pick.h"

namespace lifl::gpu::cuda::llm {

/// out[r] = kernels::llm::pickToken(logits row r, picks[r]) for `rows` rows of `vocab`
/// (device pointers), launched on `stream`.
cudaError_t launchPickTokens(uint32_t* out, const float* logits, uint32_t rows, uint32_t vocab,
                             const kernels::llm::Pick* picks, cudaStream_t stream);

}  // namespace lifl::gpu::cuda::llm
