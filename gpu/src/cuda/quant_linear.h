// The quantised linear layers of the GPU path (W8A16 / W4A16, groups of 128 inputs), as
// llm_kernels.cu uses them: the weights pre-shuffled once, at upload, into the order in which
// tensor-core MMA fragments are loaded (one 16-byte load per lane), then dequantised in
// registers. Activations are rounded to BF16 on the way in (the "A16"); sums are fp32.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "linear_outputs.h"

namespace lifl::gpu::cuda::llm {

/// Outputs per tile of the shuffled layout; a matrix is padded with zero rows to a multiple.
inline constexpr uint64_t kQuantTileRows = 16;

/// The shuffled layout of a quantised [out][in] matrix given in the QuantMatrix packing
/// (int8 one per byte; int4 two per byte, the even index in the low nibble), as 32-bit words.
std::vector<uint32_t> shuffleQuantised(const int8_t* q, uint32_t bits, uint64_t out, uint64_t in);

/// The scales [out][in / 128] padded to whole tiles (zero for the padding rows).
std::vector<float> padScales(const float* scales, uint64_t out, uint64_t in);

/// y[rows][out] = bf16(x[rows][in]) W^T on the current stream, W in the shuffled layout,
/// each output written where `y` puts it.
std::string quantLinear(const LinearOutputs& y, const float* x, uint32_t bits, const void* shuffled,
                        const float* paddedScales, uint64_t rows, uint64_t in, uint64_t out);

}  // namespace lifl::gpu::cuda::llm
