// The LLM kernels where the backend computes (lifl/gpu/device.h): the CPU reference of
// lifl/gpu/llm.h, or their CUDA versions. A DeviceModel holds a Llama's weights (BF16) and
// its paged KV cache on the GPU and runs the forward pass there; the single-kernel calls take
// host data, for the tests that compare the two backends.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "lifl/common/error.h"
#include "lifl/gpu/device.h"
#include "lifl/gpu/llm.h"
#include "lifl/gpu/llm_retrieval.h"
#include "lifl/gpu/llm_shape.h"

namespace lifl::gpu::llm {

/// The rows of one forward pass: row r is tokens[r] at positions[r] of sequence seqOf[r];
/// sequence s's block table is tables[tableStart[s] .. + tableLen[s]).
struct Batch {
  std::span<const uint32_t> tokens, positions, seqOf;
  std::span<const uint32_t> tableStart, tableLen, tables;
  std::span<const uint32_t> logitRows;       ///< the rows whose logits are wanted
  const RetrievalStep* retrieval = nullptr;  ///< rows attending to a working set (decode)
};

class DeviceModel {
 public:
  static Result<std::unique_ptr<DeviceModel>> create(const Shape& shape, const float* embed,
                                                     const float* norm, const float* lmHead,
                                                     const std::vector<HostLayer>& layers);
  virtual ~DeviceModel() = default;
  /// Stores every row's K/V in its page, runs the layers, returns [logitRows][vocab].
  virtual Result<std::vector<float>> forward(const Batch& batch) = 0;
  /// As forward, but returns only each logit row's token, picked on the device as
  /// kernels::llm::pickToken picks it with picks[j]: 4 bytes a row come back instead of the
  /// vocabulary's logits.
  virtual Result<std::vector<uint32_t>> forwardTokens(
      const Batch& batch, std::span<const kernels::llm::Pick> picks) = 0;
  /// A sequence's K/V between its pages and host or device memory (an IpcMemory), in the
  /// hand-off layout of Engine::exportKv: [layer][K, V][token][kvHeads * headDim], each value
  /// as `rows` (converted from or to the pages' type where it differs).
  /// @param stride tokens per (layer, K/V) block of `out` (0: `length`)
  virtual Result<void> exportKv(std::span<const uint32_t> pages, uint32_t length, void* out,
                                KvDtype rows, uint32_t stride = 0) = 0;
  virtual Result<void> importKv(std::span<const uint32_t> pages, uint32_t length, const void* in,
                                KvDtype rows) = 0;
};

/// Device memory that another process on the same GPU maps by a 64-byte handle (CUDA IPC):
/// the KV hand-off from the prefill stage to the decode stage without a trip through the
/// host. The allocating side frees it, the opening side unmaps it, when destroyed.
class IpcMemory {
 public:
  using Handle = std::array<uint8_t, 64>;
  static Result<IpcMemory> allocate(size_t bytes);
  static Result<IpcMemory> open(const Handle& handle);
  IpcMemory(IpcMemory&& other) noexcept;
  IpcMemory& operator=(IpcMemory&& other) noexcept;
  ~IpcMemory();
  float* data() const { return static_cast<float*>(device_); }
  const Handle& handle() const { return handle_; }

 private:
  IpcMemory() = default;
  void* device_ = nullptr;
  bool opened_ = false;
  Handle handle_{};
};

/// Host memory pinned and mapped for the device (RAII): what the device reads zero-copy.
class PinnedMemory {
 public:
  PinnedMemory() = default;  ///< none
  static Result<PinnedMemory> allocate(size_t bytes);
  PinnedMemory(PinnedMemory&& other) noexcept;
  PinnedMemory& operator=(PinnedMemory&& other) noexcept;
  ~PinnedMemory();
  float* data() const { return static_cast<float*>(host_); }
  /// The device's address of data().
  const float* device() const { return static_cast<const float*>(device_); }

 private:
  void* host_ = nullptr;
  void* device_ = nullptr;
};

/// The decode attention's mean time over `batch` sequences of `context` positions (the
/// benchmark's measurement; CUDA only): launches one after another, or (inGraph) replayed
/// from one CUDA graph, as the decode step runs them.
Result<double> timeDecodeAttention(uint32_t batch, uint32_t heads, uint32_t kvHeads,
                                   uint32_t headDim, uint32_t context, KvDtype dtype, int reps,
                                   bool inGraph = false);

// Single kernels on host data, on either backend (the CUDA linear holds W in BF16).
Result<void> rmsNorm(Backend b, float* out, const float* x, const float* w, uint64_t rows,
                     uint64_t n, float eps);
Result<void> rope(Backend b, float* x, uint64_t rows, uint32_t heads, uint32_t headDim,
                  const uint32_t* positions, double theta);
Result<void> siluAndMul(Backend b, float* out, const float* gate, const float* up, uint64_t n);
/// out[r] = kernels::llm::pickToken(row r of logits [rows][vocab], picks[r]).
Result<void> pickTokens(Backend b, uint32_t* out, const float* logits, uint64_t rows,
                        uint32_t vocab, const kernels::llm::Pick* picks);
Result<void> linear(Backend b, float* y, const float* x, const float* w, uint64_t rows, uint64_t in,
                    uint64_t out);
/// y = x W^T with W quantised (QuantMatrix), on either backend.
Result<void> linearQuant(Backend b, float* y, const float* x, const kernels::llm::QuantMatrix& w,
                         uint64_t rows);
/// The quantised parts (alike in bits and inputs) as the GPU's decode step runs q, k and v:
/// stacked into one matrix, each part's outputs to its own array, ys[p] = x W_p^T. On the
/// CPU, one linear a part (the reference).
Result<void> linearQuantStacked(Backend b, std::span<float* const> ys, const float* x,
                                std::span<const kernels::llm::QuantMatrix> parts, uint64_t rows);
/// The linear's mean time on the device: kind 16 (BF16), 8, 4 (quantised), 0 (cuBLAS BF16
/// GemmEx, the baseline). CUDA only; the benchmark's measurement (inGraph as for
/// timeDecodeAttention). coldWeights: each launch reads another copy of the weights, from
/// copies that make 4 x the L2 cache, so that they come from HBM as in a decode step.
/// The floor under any of those times: a kernel that only waits for the one before and lets
/// the next be scheduled, on `blocks` blocks of `threads`, timed as timeLinear times.
Result<double> timeLaunchFloor(uint32_t blocks, uint32_t threads, int reps, bool inGraph = false);
Result<double> timeLinear(int kind, uint64_t rows, uint64_t in, uint64_t out, int reps,
                          bool inGraph = false, bool coldWeights = false);

/// Paged attention (kernels::llm::attention) with the pages held as `dtype`: on the device,
/// BF16 pages take the cache's values rounded to BF16 (kernels::llm::roundToBf16), and the
/// CPU rounds copies of them alike.
Result<void> attention(Backend b, float* out, const float* q, uint64_t rows,
                       const uint32_t* positions, uint32_t heads,
                       const kernels::llm::KvPages& cache, uint64_t pageFloats,
                       std::span<const uint32_t> blockTable, KvDtype dtype = KvDtype::F32);
/// One query row's attention over per-KV-head lists of positions (kernels::llm::attentionAt):
/// KV retrieval's attention. On CUDA the cache stays in host memory and the listed K/V rows
/// are read from it zero-copy into a working set of `dtype` pages on the device (the CPU
/// rounds as attention does).
Result<void> attentionAt(Backend b, float* out, const float* q, uint32_t heads,
                         const kernels::llm::KvPages& cache, uint64_t pageFloats,
                         std::span<const uint32_t> blockTable,
                         std::span<const std::vector<uint32_t>> positions,
                         KvDtype dtype = KvDtype::F32);
/// k-means of a prompt's keys (kernels::llm::kmeans, same results up to fp32 ties). On CUDA
/// for head dims that are multiples of 32 up to 256; others take the CPU kernel.
Result<void> kmeans(Backend b, const float* keys, uint32_t n, uint32_t kvHeads, uint32_t headDim,
                    uint32_t clusters, uint32_t rounds, uint32_t* owner, float* centroids);
/// Mean time of that on CUDA (the benchmark's measurement): `rowsPerHead` rows a KV head
/// gathered from `context` positions in pinned host memory and attended (`gather`), or the
/// attention alone over rows gathered before.
Result<double> timeRetrievedAttention(uint32_t heads, uint32_t kvHeads, uint32_t headDim,
                                      uint32_t context, uint32_t rowsPerHead, bool gather,
                                      KvDtype dtype, int reps);

}  // namespace lifl::gpu::llm
