// W8A16 / W4A16 linear layers on the tensor cores (after Marlin and Tilus, gpu.md): a block
// owns 16 outputs, its warps split the input groups; each lane loads 16 bytes of weights per
// step, already in the order of its mma.m16n8k16 A fragments, turns them into exact BF16
// integers in registers, and feeds the MMAs with up to 32 activation rows as B. A group's
// fp32 sum is scaled by the group's scale, so the only rounding beyond fp32 is that of the
// activations to BF16.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda_check.h"
#include "quant_linear.h"

namespace lifl::gpu::cuda::llm {
namespace {

constexpr uint64_t kGroup = 128;

/// K-tiles of 16 inputs in one lane's 16-byte load: int4 holds 4 (8 values each), int8 2.
__host__ __device__ constexpr uint64_t tilesPerChunk(uint32_t bits) { return bits == 4 ? 4 : 2; }

// The input order inside a chunk is permuted (the same for weights and activations, so the
// dot product is unchanged) such that lane t's activations for every k-tile of the chunk are
// 4 * tilesPerChunk consecutive floats: element e (0..3) of k-tile kt of lane group t is
// input t * 4 * KT + kt * 4 + e. Elements 0, 1 are the fragment's k = 2t, 2t+1; 2, 3 are
// k = 2t+8, 2t+9 (PTX ISA, "Matrix Fragments for mma.m16n8k16").
__host__ __device__ constexpr uint64_t permutedInput(uint64_t kt, uint64_t t, uint64_t e,
                                                     uint64_t KT) {
  return t * 4 * KT + kt * 4 + e;
}

__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t bits(__nv_bfloat162 v) {
  return *reinterpret_cast<uint32_t*>(&v);
}

// int4: register p takes nibbles p (low half) and p + 4 (high half), stored as q + 8. One
// LOP3 puts each into the mantissa of BF16 128 (exact: 128 + u needs 4 of its 7 bits), one
// subtraction of 136 leaves q.
__device__ __forceinline__ void dequant4(uint32_t word, uint32_t (&a)[4]) {
  const __nv_bfloat162 bias = __halves2bfloat162(__ushort_as_bfloat16(0x4308),
                                                 __ushort_as_bfloat16(0x4308));  // 136
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    uint32_t v;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n"  // (a & b) | c
        : "=r"(v)
        : "r"(word >> (4 * p)), "n"(0x000F000F), "n"(0x43004300));
    a[p] = bits(__hsub2(*reinterpret_cast<__nv_bfloat162*>(&v), bias));
  }
}

// int8: bytes stored as q + 128; PRMT puts byte b into the mantissa of fp32 2^23, one
// subtraction leaves q, and the pair is packed to BF16 (exact: |q| <= 128).
template <int B>
__device__ __forceinline__ uint32_t pair8(uint32_t word) {
  const float lo = __int_as_float(__byte_perm(word, 0x4B00, 0x5440 | B)) - 8388736.f;
  const float hi = __int_as_float(__byte_perm(word, 0x4B00, 0x5440 | (B + 1))) - 8388736.f;
  return bits(__floats2bfloat162_rn(lo, hi));
}

/// Blocks an SM must hold (0: ptxas's choice), which caps the registers at 64: two of 16
/// warps, so that a launch's blocks fit beside those of the one before it (launchDependent),
/// where ptxas's own choice spilled; one of 32.
constexpr int minBlocksFor(int warps) { return warps == 32 ? 1 : warps == 16 ? 2 : 0; }

// WARPS split a tile's groups; U groups per warp are loaded before any is used (more bytes
// in flight per lane where there are few tiles to spread over the SMs).
template <int BITS, int NT, int WARPS, int U>
__global__ void __launch_bounds__(WARPS * 32, minBlocksFor(WARPS))
    quantMmaKernel(const LinearOutputs y, const float* __restrict__ x, const uint4* __restrict__ w,
                   const float* __restrict__ scales, uint32_t rows, uint32_t in, uint32_t out) {
  constexpr int KT = static_cast<int>(tilesPerChunk(BITS)), CHUNK = 16 * KT;
  constexpr int PER_GROUP = static_cast<int>(kGroup) / CHUNK;
  const uint32_t tile = blockIdx.x, groups = in / kGroup, chunks = in / CHUNK;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const uint4* src = w + uint64_t{tile} * chunks * 32 + lane;
  const float* scale0 = scales + (uint64_t{tile} * 16 + g) * groups;
  const float* scale1 = scale0 + 8 * uint64_t{groups};
  const float* xr[NT];
  bool live[NT];
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const uint32_t r = n * 8 + g;
    live[n] = r < rows;
    xr[n] = x + uint64_t{live[n] ? r : 0} * in + permutedInput(0, t, 0, KT);
  }
  float total[NT][4] = {};
  // The groups' scales are loaded with their weights: loaded after the MMAs, they would
  // cost a second round trip to memory.
  uint4 raw[U][PER_GROUP];
  float s0[U], s1[U];
  auto load = [&](uint32_t g0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint32_t grp = g0 + u * WARPS;
      if (grp >= groups) break;
#pragma unroll
      for (int c = 0; c < PER_GROUP; ++c)
        raw[u][c] = __ldcs(src + (uint64_t{grp} * PER_GROUP + c) * 32);
      s0[u] = scale0[grp];
      s1[u] = scale1[grp];
    }
  };
  // The weights are the model's, written by no kernel of the step: the first groups (at
  // decode's shapes, all of a warp's) stream in while the kernel before finishes; x is that
  // kernel's output, read only past the wait (launchDependent).
  load(warp);
  afterPrerequisites();
  auto accumulate = [&](uint32_t g0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint32_t grp = g0 + u * WARPS;
      if (grp >= groups) break;
      float acc[NT][4] = {};
#pragma unroll
      for (int c = 0; c < PER_GROUP; ++c) {
        const uint32_t* words = reinterpret_cast<const uint32_t*>(&raw[u][c]);
        const uint64_t chunkBase = (uint64_t{grp} * PER_GROUP + c) * CHUNK;
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
          uint32_t a[4];
          if constexpr (BITS == 4) {
            dequant4(words[kt], a);
          } else {
            a[0] = pair8<0>(words[2 * kt]);
            a[1] = pair8<2>(words[2 * kt]);
            a[2] = pair8<0>(words[2 * kt + 1]);
            a[3] = pair8<2>(words[2 * kt + 1]);
          }
#pragma unroll
          for (int n = 0; n < NT; ++n) {
            float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
            if (live[n]) v = *reinterpret_cast<const float4*>(xr[n] + chunkBase + kt * 4);
            mma(acc[n], a, bits(__floats2bfloat162_rn(v.x, v.y)),
                bits(__floats2bfloat162_rn(v.z, v.w)));
          }
        }
      }
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        total[n][0] += s0[u] * acc[n][0];
        total[n][1] += s0[u] * acc[n][1];
        total[n][2] += s1[u] * acc[n][2];
        total[n][3] += s1[u] * acc[n][3];
      }
    }
  };
  // The first pass apart from the loop, so that its registers need not live across it.
  if (static_cast<uint32_t>(warp) < groups) accumulate(warp);
  for (uint32_t g0 = warp + WARPS * U; g0 < groups; g0 += WARPS * U) {
    load(g0);
    accumulate(g0);
  }
  // The warps' partial sums over their groups, added in shared memory. Accumulator i of
  // lane (g, t) is output g (+8 for i >= 2) of activation row 2t (+1 for odd i).
  __shared__ float partial[WARPS][NT * 4 * 32];
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) partial[warp][(n * 4 + i) * 32 + lane] = total[n][i];
  __syncthreads();
  for (int j = threadIdx.x; j < NT * 4 * 32; j += blockDim.x) {
    float s = 0;
#pragma unroll
    for (int v = 0; v < WARPS; ++v) s += partial[v][j];
    const int l = j % 32, i = (j / 32) % 4, n = j / 128;
    const uint32_t o = tile * 16 + l / 4 + (i >= 2 ? 8 : 0), r = n * 8 + 2 * (l % 4) + (i & 1);
    if (o >= out || r >= rows) continue;
    if (float* to = y.at(r, o)) *to = s;
  }
}

template <int BITS>
cudaError_t launch(const LinearOutputs& y, const float* x, const uint4* w, const float* scales,
                   uint32_t rows, uint32_t in, uint32_t out) {
  const unsigned tiles = static_cast<unsigned>((out + kQuantTileRows - 1) / kQuantTileRows);
  constexpr int U = BITS == 4 ? 2 : 1;  // 4 loads of 16 bytes in flight per lane (8 warps)
  // Fewer tiles than two per SM (decode's 2048-wide layers): more warps per tile, each
  // holding one group, or two, at a time. The smaller register arrays took q/o (16 groups)
  // from 2.6 to 2.0 us in a graph, and 32 warps of one group took down (64 groups, two
  // passes) from 6.8 to 4.5 us, against 5.1 for 32 warps of two and 5.9 for 8 of eight
  // (H100, docs/benchmarks.md).
  if (rows <= 8 && tiles < 2 * 132) {
    const uint32_t groups = in / static_cast<uint32_t>(kGroup);
    if (groups <= 16)
      return launchDependent(quantMmaKernel<BITS, 1, 16, 1>, tiles, 16 * 32, y, x, w, scales, rows,
                             in, out);
    if (groups <= 32)
      return launchDependent(quantMmaKernel<BITS, 1, 16, 2>, tiles, 16 * 32, y, x, w, scales, rows,
                             in, out);
    return launchDependent(quantMmaKernel<BITS, 1, 32, 1>, tiles, 32 * 32, y, x, w, scales, rows,
                           in, out);
  }
  if (rows <= 8)
    return launchDependent(quantMmaKernel<BITS, 1, 8, U>, tiles, 8 * 32, y, x, w, scales, rows, in,
                           out);
  if (rows <= 16)
    return launchDependent(quantMmaKernel<BITS, 2, 8, U>, tiles, 8 * 32, y, x, w, scales, rows, in,
                           out);
  return launchDependent(quantMmaKernel<BITS, 4, 8, U>, tiles, 8 * 32, y, x, w, scales, rows, in,
                         out);
}

}  // namespace

std::vector<uint32_t> shuffleQuantised(const int8_t* q, uint32_t bits, uint64_t out, uint64_t in) {
  const uint64_t KT = tilesPerChunk(bits), chunkK = 16 * KT, chunks = in / chunkK;
  const uint64_t tiles = (out + kQuantTileRows - 1) / kQuantTileRows;
  // The stored value plus 2^(bits-1), so that it is unsigned; padding rows hold zeros.
  auto biased = [&](uint64_t row, uint64_t k) -> uint32_t {
    if (row >= out) return bits == 4 ? 8 : 128;
    const uint64_t at = row * in + k;
    if (bits == 8) return static_cast<uint8_t>(q[at]) ^ 0x80u;
    const auto byte = static_cast<uint8_t>(q[at / 2]);
    return ((at % 2 ? byte >> 4 : byte) & 0xFu) ^ 0x8u;
  };
  // Register p of lane (g, t) holds outputs g (even p) or g + 8 (odd p), and elements
  // 2 * (p / 2) + h (h = 0, 1: the register's low and high halves) of its k-tile.
  auto element = [&](uint64_t tile, uint64_t chunk, uint32_t lane, uint64_t kt, int p, int h) {
    const uint64_t row = tile * kQuantTileRows + lane / 4 + 8 * (p & 1);
    const uint64_t k = chunk * chunkK + permutedInput(kt, lane % 4, 2 * (p / 2) + h, KT);
    return biased(row, k);
  };
  std::vector<uint32_t> words(tiles * chunks * 32 * 4);
  uint32_t* next = words.data();
  for (uint64_t tile = 0; tile < tiles; ++tile)
    for (uint64_t chunk = 0; chunk < chunks; ++chunk)
      for (uint32_t lane = 0; lane < 32; ++lane)
        for (int wi = 0; wi < 4; ++wi) {
          uint32_t word = 0;
          if (bits == 4) {  // word kt: nibble p + 4h is register p's half h
            for (int p = 0; p < 4; ++p)
              for (int h = 0; h < 2; ++h)
                word |= element(tile, chunk, lane, wi, p, h) << (4 * (p + 4 * h));
          } else {  // words 2kt, 2kt + 1: registers 0, 1 and 2, 3, two bytes each
            for (int b = 0; b < 4; ++b)
              word |= element(tile, chunk, lane, wi / 2, 2 * (wi % 2) + b / 2, b % 2) << (8 * b);
          }
          *next++ = word;
        }
  return words;
}

std::vector<float> padScales(const float* scales, uint64_t out, uint64_t in) {
  const uint64_t groups = in / kGroup;
  const uint64_t rows = (out + kQuantTileRows - 1) / kQuantTileRows * kQuantTileRows;
  std::vector<float> padded(rows * groups, 0.f);
  std::copy(scales, scales + out * groups, padded.begin());
  return padded;
}

std::string quantLinear(const LinearOutputs& y, const float* x, uint32_t bits, const void* shuffled,
                        const float* paddedScales, uint64_t rows, uint64_t in, uint64_t out) {
  if (in % kGroup) return "quantised linear: the input width must be a multiple of 128";
  if (bits != 4 && bits != 8) return "quantised linear: 4 or 8 bits";
  const auto* w = static_cast<const uint4*>(shuffled);
  constexpr uint64_t kRowsPerPass = 32;
  for (uint64_t r = 0; r < rows; r += kRowsPerPass) {
    const auto n = static_cast<uint32_t>(std::min(kRowsPerPass, rows - r));
    LIFL_CU((bits == 4 ? launch<4> : launch<8>)(y.from(r), x + r * in, w, paddedScales, n,
                                                static_cast<uint32_t>(in),
                                                static_cast<uint32_t>(out)));
  }
  return "";
}

}  // namespace lifl::gpu::cuda::llm
