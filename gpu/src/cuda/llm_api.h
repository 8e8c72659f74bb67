// The CUDA side of the LLM kernels (gpu/src/cuda/llm_kernels.cu), as the C++ side sees it:
// plain types, "" on success or one line saying what failed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lifl/gpu/llm_pick.h"
#include "lifl/gpu/llm_retrieval.h"
#include "lifl/gpu/llm_shape.h"

namespace lifl::gpu::cuda::llm {

using gpu::llm::HostLayer;
using gpu::llm::HostLinear;
using gpu::llm::KvDtype;
using gpu::llm::RetrievalLayer;
using gpu::llm::RetrievalStep;
using gpu::llm::Shape;
using gpu::llm::WorkingSetCopy;

struct Model;  ///< device weights, KV pages, scratch
std::string create(const Shape& shape, const float* embed, const float* norm, const float* lmHead,
                   const std::vector<HostLayer>& layers, Model** out);
void destroy(Model* model);

/// One forward pass over `rows` tokens: row r is token tokens[r] at position positions[r] of
/// sequence seqOf[r], whose block table is tables[tableStart[s] .. tableStart[s] + tableLen[s]).
/// K/V of every row are stored in its page first; logits of rows logitRows go to `logits`,
/// or, where `drawn` is given, only each one's token goes to drawn[logitCount], picked on the
/// device as pickTokens does (picks[j]), and `logits` is not used.
std::string forward(Model* model, uint32_t rows, const uint32_t* tokens, const uint32_t* positions,
                    const uint32_t* seqOf, uint32_t sequences, const uint32_t* tableStart,
                    const uint32_t* tableLen, const uint32_t* tables, uint32_t tableEntries,
                    const uint32_t* logitRows, uint32_t logitCount, float* logits,
                    const RetrievalStep* retrieval = nullptr, uint32_t* drawn = nullptr,
                    const kernels::llm::Pick* picks = nullptr);

/// Copies `length` tokens of a sequence's K/V between its pages and `other` (host memory, or
/// device memory such as an IPC mapping), in the hand-off layout ([layer][K, V][token][kvHeads
/// * headDim], `stride` tokens a block: 0 for `length`), each value as `rows`; complete when
/// it returns, so that another process may read what it wrote.
std::string copyKv(Model* model, const uint32_t* pages, uint32_t length, void* other,
                   bool fromPages, KvDtype rows, uint32_t stride = 0);

/// Host memory pinned and mapped (cudaHostAlloc), and its device address.
std::string pinnedAllocate(size_t bytes, void** host, void** device);
void pinnedFree(void* host);

/// Device memory another process on this GPU maps by a 64-byte handle (CUDA IPC).
std::string ipcAllocate(size_t bytes, void** device, unsigned char* handle);
std::string ipcOpen(const unsigned char* handle, void** device);
/// Frees what ipcAllocate gave, or unmaps what ipcOpen gave.
void ipcRelease(void* device, bool opened);

/// Mean seconds of the decode attention over `batch` sequences of `context` positions each
/// (device-resident pages), timed with CUDA events over `reps` launches (inGraph: replayed
/// from one CUDA graph).
std::string timeDecodeAttention(uint32_t batch, uint32_t heads, uint32_t kvHeads, uint32_t headDim,
                                uint32_t context, KvDtype dtype, int reps, bool inGraph,
                                double* seconds);

// Single kernels on host data (copied in and out), for the tests against the CPU reference.
std::string rmsNorm(float* out, const float* x, const float* w, uint64_t rows, uint64_t n,
                    float eps);
std::string rope(float* x, uint64_t rows, uint32_t heads, uint32_t headDim,
                 const uint32_t* positions, double theta);
std::string siluAndMul(float* out, const float* gate, const float* up, uint64_t n);
/// out[r] = kernels::llm::pickToken(row r of logits [rows][vocab], picks[r]).
std::string pickTokens(uint32_t* out, const float* logits, uint64_t rows, uint32_t vocab,
                       const kernels::llm::Pick* picks);
/// y = x W^T with W rounded to BF16 (as the device model holds it).
std::string linearBf16(float* y, const float* x, const float* w, uint64_t rows, uint64_t in,
                       uint64_t out);
/// y = x W^T with W quantised (bits 8 or 4, the QuantMatrix layout).
std::string linearQuant(float* y, const float* x, uint32_t bits, const int8_t* q,
                        const float* scales, uint64_t rows, uint64_t in, uint64_t out);
/// ys[p] = x W_p^T for `count` quantised parts stacked into one matrix (as q, k and v run).
std::string linearQuantStacked(float* const* ys, const float* x, uint32_t bits,
                               const int8_t* const* q, const float* const* scales,
                               const uint64_t* outs, size_t count, uint64_t rows, uint64_t in);
/// Mean seconds of y = x W^T, W [out][in] on the device: kind 16 (BF16, this library), 8 or
/// 4 (quantised), or 0 (cuBLAS GemmEx, BF16 inputs, fp32 output and compute: the baseline).
/// Mean seconds of an empty dependent kernel (wait, allow the next) on blocks x threads.
std::string timeLaunchFloor(uint32_t blocks, uint32_t threads, int reps, bool inGraph,
                            double* seconds);
std::string timeLinear(int kind, uint64_t rows, uint64_t in, uint64_t out, int reps, bool inGraph,
                       bool coldWeights, double* seconds);

/// Paged causal GQA attention of one sequence (the layout of kernels::llm::attention), the
/// pages held on the device as `dtype` (BF16: rounded on the way in).
std::string attention(float* out, const float* q, uint64_t rows, const uint32_t* positions,
                      uint32_t heads, uint32_t kvHeads, uint32_t headDim, const float* kPages,
                      const float* vPages, uint64_t pageFloats, const uint32_t* blockTable,
                      uint32_t blocks, KvDtype dtype);

/// One query row's attention over per-KV-head position lists of a paged cache that stays in
/// host memory: the listed K/V rows are read zero-copy into a working set on the device, then
/// attended (KV retrieval's GPU side). kHost/vHost hold pageFloats floats each; the working
/// set's pages are of `dtype`.
std::string attentionAtHost(float* out, const float* q, uint32_t heads, uint32_t kvHeads,
                            uint32_t headDim, const float* kHost, const float* vHost,
                            uint64_t pageFloats, const uint32_t* blockTable,
                            const std::vector<std::vector<uint32_t>>& positions, KvDtype dtype);
/// kernels::llm::kmeans on the device (keys and outputs in host memory), for head dims that
/// kmeansOnDevice accepts.
bool kmeansOnDevice(uint32_t headDim);
std::string kmeans(const float* keys, uint32_t n, uint32_t kvHeads, uint32_t headDim,
                   uint32_t clusters, uint32_t rounds, uint32_t* owner, float* centroids);
/// Mean seconds of that with rowsPerHead rows a head out of `context` in pinned host memory:
/// gather and attention (a step that re-selects), or the attention alone (one that does not).
std::string timeRetrievedAttention(uint32_t heads, uint32_t kvHeads, uint32_t headDim,
                                   uint32_t context, uint32_t rowsPerHead, bool gather,
                                   KvDtype dtype, int reps, double* seconds);

}  // namespace lifl::gpu::cuda::llm
