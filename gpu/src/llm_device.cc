#include "lifl/gpu/llm_device.h"

#include <utility>

#ifdef LIFL_WITH_CUDA
#include "cuda/llm_api.h"
#endif

namespace lifl::gpu::llm {
namespace {

Error noDevice() { return unavailable("no_gpu", "no CUDA device: " + cudaInfo().why); }

#ifdef LIFL_WITH_CUDA
Result<void> checked(const std::string& why) {
  if (why.empty()) return success();
  return internal("cuda_error", why);
}

class CudaModel final : public DeviceModel {
 public:
  explicit CudaModel(cuda::llm::Model* m, uint32_t vocab) : model_(m), vocab_(vocab) {}
  ~CudaModel() override { cuda::llm::destroy(model_); }
  Result<std::vector<float>> forward(const Batch& b) override {
    std::vector<float> logits(b.logitRows.size() * size_t{vocab_});
    LIFL_TRYV(run(b, logits.data()));
    return logits;
  }
  Result<std::vector<uint32_t>> forwardTokens(const Batch& b,
                                              std::span<const kernels::llm::Pick> picks) override {
    if (picks.size() != b.logitRows.size())
      return badRequest("bad_arguments", "a pick for each logit row");
    std::vector<uint32_t> tokens(b.logitRows.size());
    LIFL_TRYV(run(b, nullptr, tokens.data(), picks.data()));
    return tokens;
  }
  Result<void> exportKv(std::span<const uint32_t> pages, uint32_t length, void* out, KvDtype rows,
                        uint32_t stride) override {
    return checked(cuda::llm::copyKv(model_, pages.data(), length, out, true, rows, stride));
  }
  Result<void> importKv(std::span<const uint32_t> pages, uint32_t length, const void* in,
                        KvDtype rows) override {
    return checked(
        cuda::llm::copyKv(model_, pages.data(), length, const_cast<void*>(in), false, rows));
  }

 private:
  Result<void> run(const Batch& b, float* logits, uint32_t* drawn = nullptr,
                   const kernels::llm::Pick* picks = nullptr) {
    return checked(cuda::llm::forward(
        model_, static_cast<uint32_t>(b.tokens.size()), b.tokens.data(), b.positions.data(),
        b.seqOf.data(), static_cast<uint32_t>(b.tableStart.size()), b.tableStart.data(),
        b.tableLen.data(), b.tables.data(), static_cast<uint32_t>(b.tables.size()),
        b.logitRows.data(), static_cast<uint32_t>(b.logitRows.size()), logits, b.retrieval, drawn,
        picks));
  }

  cuda::llm::Model* model_;
  uint32_t vocab_;
};
#endif

}  // namespace

Result<std::unique_ptr<DeviceModel>> DeviceModel::create(
    [[maybe_unused]] const Shape& s, [[maybe_unused]] const float* embed,
    [[maybe_unused]] const float* norm, [[maybe_unused]] const float* lmHead,
    [[maybe_unused]] const std::vector<HostLayer>& layers) {
#ifdef LIFL_WITH_CUDA
  if (!cudaInfo().usable) return noDevice();
  cuda::llm::Model* m = nullptr;
  if (auto why = cuda::llm::create(s, embed, norm, lmHead, layers, &m); !why.empty())
    return unavailable("gpu_memory", "cannot load the model on the device: " + why);
  return std::unique_ptr<DeviceModel>(new CudaModel(m, s.vocab));
#else
  return noDevice();
#endif
}

#ifdef LIFL_WITH_CUDA
#define LIFL_ON_DEVICE(call)                   \
  do {                                         \
    if (!cudaInfo().usable) return noDevice(); \
    return checked(call);                      \
  } while (0)
/// The seconds a cuda::llm::time* call measures into `seconds`.
#define LIFL_TIMED_ON_DEVICE(call)             \
  do {                                         \
    if (!cudaInfo().usable) return noDevice(); \
    double seconds = 0;                        \
    LIFL_TRYV(checked(call));                  \
    return seconds;                            \
  } while (0)
#else
#define LIFL_ON_DEVICE(call) return noDevice()
#define LIFL_TIMED_ON_DEVICE(call) return noDevice()
#endif

Result<PinnedMemory> PinnedMemory::allocate([[maybe_unused]] size_t bytes) {
#ifdef LIFL_WITH_CUDA
  if (!cudaInfo().usable) return noDevice();
  PinnedMemory m;
  LIFL_TRYV(checked(cuda::llm::pinnedAllocate(bytes, &m.host_, &m.device_)));
  return m;
#else
  return noDevice();
#endif
}

PinnedMemory::PinnedMemory(PinnedMemory&& other) noexcept
    : host_(std::exchange(other.host_, nullptr)), device_(std::exchange(other.device_, nullptr)) {}

PinnedMemory& PinnedMemory::operator=(PinnedMemory&& other) noexcept {
  if (this != &other) {
    this->~PinnedMemory();
    host_ = std::exchange(other.host_, nullptr);
    device_ = std::exchange(other.device_, nullptr);
  }
  return *this;
}

PinnedMemory::~PinnedMemory() {
#ifdef LIFL_WITH_CUDA
  if (host_) cuda::llm::pinnedFree(host_);
#endif
  host_ = device_ = nullptr;
}

Result<IpcMemory> IpcMemory::allocate([[maybe_unused]] size_t bytes) {
#ifdef LIFL_WITH_CUDA
  if (!cudaInfo().usable) return noDevice();
  IpcMemory m;
  LIFL_TRYV(checked(cuda::llm::ipcAllocate(bytes, &m.device_, m.handle_.data())));
  return m;
#else
  return noDevice();
#endif
}

Result<IpcMemory> IpcMemory::open([[maybe_unused]] const Handle& handle) {
#ifdef LIFL_WITH_CUDA
  if (!cudaInfo().usable) return noDevice();
  IpcMemory m;
  LIFL_TRYV(checked(cuda::llm::ipcOpen(handle.data(), &m.device_)));
  m.opened_ = true;
  m.handle_ = handle;
  return m;
#else
  return noDevice();
#endif
}

IpcMemory::IpcMemory(IpcMemory&& other) noexcept
    : device_(std::exchange(other.device_, nullptr)),
      opened_(other.opened_),
      handle_(other.handle_) {}

IpcMemory& IpcMemory::operator=(IpcMemory&& other) noexcept {
  if (this != &other) {
    this->~IpcMemory();
    device_ = std::exchange(other.device_, nullptr);
    opened_ = other.opened_;
    handle_ = other.handle_;
  }
  return *this;
}

IpcMemory::~IpcMemory() {
#ifdef LIFL_WITH_CUDA
  if (device_) cuda::llm::ipcRelease(device_, opened_);
#endif
  device_ = nullptr;
}

Result<double> timeDecodeAttention([[maybe_unused]] uint32_t batch, [[maybe_unused]] uint32_t heads,
                                   [[maybe_unused]] uint32_t kvHeads,
                                   [[maybe_unused]] uint32_t headDim,
                                   [[maybe_unused]] uint32_t context,
                                   [[maybe_unused]] KvDtype dtype, [[maybe_unused]] int reps,
                                   [[maybe_unused]] bool inGraph) {
  LIFL_TIMED_ON_DEVICE(cuda::llm::timeDecodeAttention(batch, heads, kvHeads, headDim, context,
                                                      dtype, reps, inGraph, &seconds));
}

Result<void> rmsNorm(Backend b, float* out, const float* x, const float* w, uint64_t rows,
                     uint64_t n, float eps) {
  if (b == Backend::Cpu) {
    kernels::llm::rmsNorm(out, x, w, rows, n, eps);
    return success();
  }
  LIFL_ON_DEVICE(cuda::llm::rmsNorm(out, x, w, rows, n, eps));
}

Result<void> rope(Backend b, float* x, uint64_t rows, uint32_t heads, uint32_t headDim,
                  const uint32_t* positions, double theta) {
  if (b == Backend::Cpu) {
    kernels::llm::rope(x, rows, heads, headDim, positions, theta);
    return success();
  }
  LIFL_ON_DEVICE(cuda::llm::rope(x, rows, heads, headDim, positions, theta));
}

Result<void> pickTokens(Backend b, uint32_t* out, const float* logits, uint64_t rows,
                        uint32_t vocab, const kernels::llm::Pick* picks) {
  if (b == Backend::Cpu) {
    for (uint64_t r = 0; r < rows; ++r)
      out[r] = kernels::llm::pickToken(logits + r * vocab, vocab, picks[r]);
    return success();
  }
  LIFL_ON_DEVICE(cuda::llm::pickTokens(out, logits, rows, vocab, picks));
}

Result<void> siluAndMul(Backend b, float* out, const float* gate, const float* up, uint64_t n) {
  if (b == Backend::Cpu) {
    kernels::llm::siluAndMul(out, gate, up, n);
    return success();
  }
  LIFL_ON_DEVICE(cuda::llm::siluAndMul(out, gate, up, n));
}

Result<void> linear(Backend b, float* y, const float* x, const float* w, uint64_t rows, uint64_t in,
                    uint64_t out) {
  if (b == Backend::Cpu) {
    kernels::llm::matmul(y, x, w, rows, in, out);
    return success();
  }
  LIFL_ON_DEVICE(cuda::llm::linearBf16(y, x, w, rows, in, out));
}

Result<void> linearQuant(Backend b, float* y, const float* x, const kernels::llm::QuantMatrix& w,
                         uint64_t rows) {
  if (b == Backend::Cpu) {
    kernels::llm::matmulQuant(y, x, w, rows);
    return success();
  }
  LIFL_ON_DEVICE(
      cuda::llm::linearQuant(y, x, w.bits, w.q.data(), w.scales.data(), rows, w.in, w.out));
}

Result<void> linearQuantStacked(Backend b, std::span<float* const> ys, const float* x,
                                std::span<const kernels::llm::QuantMatrix> parts, uint64_t rows) {
  if (ys.size() != parts.size() || parts.empty())
    return badRequest("bad_arguments", "one output array a part, and at least one part");
  if (b == Backend::Cpu) {
    for (size_t p = 0; p < parts.size(); ++p) kernels::llm::matmulQuant(ys[p], x, parts[p], rows);
    return success();
  }
  std::vector<const int8_t*> q;
  std::vector<const float*> scales;
  std::vector<uint64_t> outs;
  for (const auto& part : parts) {
    if (part.bits != parts[0].bits || part.in != parts[0].in)
      return badRequest("bad_arguments", "stacked parts share their bits and inputs");
    q.push_back(part.q.data());
    scales.push_back(part.scales.data());
    outs.push_back(part.out);
  }
  LIFL_ON_DEVICE(cuda::llm::linearQuantStacked(ys.data(), x, parts[0].bits, q.data(), scales.data(),
                                               outs.data(), parts.size(), rows, parts[0].in));
}

Result<double> timeLaunchFloor([[maybe_unused]] uint32_t blocks, [[maybe_unused]] uint32_t threads,
                               [[maybe_unused]] int reps, [[maybe_unused]] bool inGraph) {
  LIFL_TIMED_ON_DEVICE(cuda::llm::timeLaunchFloor(blocks, threads, reps, inGraph, &seconds));
}

Result<double> timeLinear([[maybe_unused]] int kind, [[maybe_unused]] uint64_t rows,
                          [[maybe_unused]] uint64_t in, [[maybe_unused]] uint64_t out,
                          [[maybe_unused]] int reps, [[maybe_unused]] bool inGraph,
                          [[maybe_unused]] bool coldWeights) {
  LIFL_TIMED_ON_DEVICE(
      cuda::llm::timeLinear(kind, rows, in, out, reps, inGraph, coldWeights, &seconds));
}

namespace {

/// The CPU's view of pages held as `dtype`: the cache itself (fp32), or copies of its K and
/// V rounded to BF16 (kept in `k`, `v`).
kernels::llm::KvPages asHeld(const kernels::llm::KvPages& cache, uint64_t pageFloats, KvDtype dtype,
                             std::vector<float>& k, std::vector<float>& v) {
  if (dtype == KvDtype::F32) return cache;
  k.assign(cache.k, cache.k + pageFloats);
  v.assign(cache.v, cache.v + pageFloats);
  for (auto* values : {&k, &v})
    for (float& x : *values) x = kernels::llm::roundToBf16(x);
  return {k.data(), v.data(), cache.kvHeads, cache.headDim};
}

}  // namespace

Result<void> attention(Backend b, float* out, const float* q, uint64_t rows,
                       const uint32_t* positions, uint32_t heads,
                       const kernels::llm::KvPages& cache, uint64_t pageFloats,
                       std::span<const uint32_t> blockTable, KvDtype dtype) {
  if (b == Backend::Cpu) {
    std::vector<float> k, v;
    kernels::llm::attention(out, q, rows, positions, heads, asHeld(cache, pageFloats, dtype, k, v),
                            blockTable);
    return success();
  }
  LIFL_ON_DEVICE(cuda::llm::attention(out, q, rows, positions, heads, cache.kvHeads, cache.headDim,
                                      cache.k, cache.v, pageFloats, blockTable.data(),
                                      static_cast<uint32_t>(blockTable.size()), dtype));
}

Result<void> attentionAt(Backend b, float* out, const float* q, uint32_t heads,
                         const kernels::llm::KvPages& cache, uint64_t pageFloats,
                         std::span<const uint32_t> blockTable,
                         std::span<const std::vector<uint32_t>> positions, KvDtype dtype) {
  if (b == Backend::Cpu) {
    std::vector<float> k, v;
    kernels::llm::attentionAt(out, q, heads, asHeld(cache, pageFloats, dtype, k, v), blockTable,
                              positions);
    return success();
  }
  LIFL_ON_DEVICE(cuda::llm::attentionAtHost(
      out, q, heads, cache.kvHeads, cache.headDim, cache.k, cache.v, pageFloats, blockTable.data(),
      std::vector<std::vector<uint32_t>>(positions.begin(), positions.end()), dtype));
}

Result<void> kmeans(Backend b, const float* keys, uint32_t n, uint32_t kvHeads, uint32_t headDim,
                    uint32_t clusters, uint32_t rounds, uint32_t* owner, float* centroids) {
#ifdef LIFL_WITH_CUDA
  if (b == Backend::Cuda && cuda::llm::kmeansOnDevice(headDim))
    LIFL_ON_DEVICE(
        cuda::llm::kmeans(keys, n, kvHeads, headDim, clusters, rounds, owner, centroids));
#endif
  if (b == Backend::Cuda && !cudaInfo().usable) return noDevice();
  kernels::llm::kmeans(keys, n, kvHeads, headDim, clusters, rounds, owner, centroids);
  return success();
}

Result<double> timeRetrievedAttention([[maybe_unused]] uint32_t heads,
                                      [[maybe_unused]] uint32_t kvHeads,
                                      [[maybe_unused]] uint32_t headDim,
                                      [[maybe_unused]] uint32_t context,
                                      [[maybe_unused]] uint32_t rowsPerHead,
                                      [[maybe_unused]] bool gather, [[maybe_unused]] KvDtype dtype,
                                      [[maybe_unused]] int reps) {
  LIFL_TIMED_ON_DEVICE(cuda::llm::timeRetrievedAttention(
      heads, kvHeads, headDim, context, rowsPerHead, gather, dtype, reps, &seconds));
}

}  // namespace lifl::gpu::llm
