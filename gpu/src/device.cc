#include "lifl/gpu/device.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "lifl/common/log.h"

#ifdef LIFL_WITH_CUDA
#include "cuda/cuda_api.h"
#endif

namespace lifl::gpu {
namespace {

[[maybe_unused]] Error cudaError(const std::string& what) { return internal("cuda_error", what); }

/// Auto: registered inputs of at least this many bytes per launch are pipelined (bench_gpu).
/// Measured on an H100 (docs/benchmarks.md, GPU): zero-copy wins up to 1 MB per update
/// (8.4 MB a launch), the pipeline from 4 MB per update (34 MB a launch) by 3-5%.
constexpr uint64_t kPipelineFromBytes = 16ull << 20;

/// The reference: sums in host memory, the CPU kernels.
class CpuAccumulator final : public Accumulator {
 public:
  explicit CpuAccumulator(uint64_t n) : Accumulator(n), sums_(n) {}
  Backend backend() const override { return Backend::Cpu; }
  Result<void> fold(uint64_t at, const kernels::FoldInput* inputs, size_t count, uint64_t n,
                    bool first) override {
    LIFL_CHECK(at + n <= n_, "fold beyond the accumulator");
    float* out = sums_.data() + at;
    kernels::accumulateMany(out, first ? nullptr : out, inputs, count, n);
    return success();
  }
  Result<void> scaleInto(float* out, double scale, const float* base) override {
    kernels::scaleInto(out, sums_.data(), n_, scale, base);
    return success();
  }
  Result<void> copyTo(float* out) override {
    std::memcpy(out, sums_.data(), n_ * sizeof(float));
    return success();
  }

 private:
  std::vector<float> sums_;
};

class HostBuffer final : public DeviceBuffer {
 public:
  HostBuffer(const void* data, size_t bytes) : bytes_(bytes) {
    std::memcpy(bytes_.data(), data, bytes);
  }
  const void* data() const override { return bytes_.data(); }
  Result<void> copyFrom(const void* host, size_t bytes) override {
    std::memcpy(bytes_.data(), host, std::min(bytes, bytes_.size()));
    return success();
  }

 private:
  std::vector<std::byte> bytes_;
};

#ifdef LIFL_WITH_CUDA
class CudaBuffer final : public DeviceBuffer {
 public:
  CudaBuffer(void* device, size_t bytes) : device_(device), bytes_(bytes) {}
  ~CudaBuffer() override { cuda::releaseBytes(device_); }
  const void* data() const override { return device_; }
  Result<void> copyFrom(const void* host, size_t bytes) override {
    if (auto why = cuda::copyIn(device_, host, std::min(bytes, bytes_)); !why.empty())
      return cudaError("copy to the device: " + why);
    return success();
  }

 private:
  void* device_;  ///< owned
  size_t bytes_;
};

class CudaAccumulator final : public Accumulator {
 public:
  static Result<std::unique_ptr<Accumulator>> create(uint64_t n) {
    float* device = nullptr;
    if (auto why = cuda::allocate(n, &device); !why.empty())
      return unavailable("gpu_memory", "cannot allocate the accumulator on the device: " + why);
    return std::unique_ptr<Accumulator>(new CudaAccumulator(n, device));
  }
  ~CudaAccumulator() override { cuda::release(sums_); }
  Backend backend() const override { return Backend::Cuda; }
  Result<void> fold(uint64_t at, const kernels::FoldInput* inputs, size_t count, uint64_t n,
                    bool first) override {
    LIFL_CHECK(at + n <= n_, "fold beyond the accumulator");
    if (auto why = cuda::fold(sums_ + at, inputs, count, n, first); !why.empty())
      return cudaError("fold: " + why);
    return success();
  }
  Result<void> scaleInto(float* out, double scale, const float* base) override {
    if (auto why = cuda::scaleInto(out, sums_, n_, scale, base); !why.empty())
      return cudaError("scale: " + why);
    return success();
  }
  Result<void> copyTo(float* out) override {
    if (auto why = cuda::copyOut(out, sums_, n_); !why.empty()) return cudaError("copy: " + why);
    return success();
  }

 private:
  CudaAccumulator(uint64_t n, float* sums) : Accumulator(n), sums_(sums) {}
  float* sums_;  ///< device memory, owned
};
#endif

}  // namespace

const char* backendName(Backend b) { return b == Backend::Cuda ? "cuda" : "cpu"; }

const CudaInfo& cudaInfo() {
  static const CudaInfo info = [] {
    CudaInfo i;
#ifdef LIFL_WITH_CUDA
    i.built = true;
    cuda::setHostInputs(static_cast<int>(HostInputs::Auto), kPipelineFromBytes, 64ull << 20);
    const auto p = cuda::probe();
    i.usable = p.usable;
    i.device = p.device;
    i.multiprocessors = p.multiprocessors;
    i.why = p.why;
#else
    i.why = "the kernel library was built without nvcc";
#endif
    if (i.usable)
      LIFL_INFO("gpu: CUDA device " << i.device << " (" << i.multiprocessors
                                    << " multiprocessors)");
    else
      LIFL_INFO("gpu: no CUDA device (" << i.why << "); the CPU kernels run");
    return i;
  }();
  return info;
}

Backend pickBackend(bool wantCuda) {
  if (!wantCuda) return Backend::Cpu;
  return cudaInfo().usable ? Backend::Cuda : Backend::Cpu;
}

namespace {
std::mutex registryMutex;
std::vector<void*> registered;  ///< bases registered by this process
}  // namespace

Result<void> registerHostMemory([[maybe_unused]] void* base, [[maybe_unused]] size_t bytes) {
#ifdef LIFL_WITH_CUDA
  if (!cudaInfo().usable) return success();
  std::lock_guard lock(registryMutex);
  if (std::find(registered.begin(), registered.end(), base) != registered.end()) return success();
  if (auto why = cuda::registerHost(base, bytes); !why.empty())
    return cudaError("cannot register host memory for the device: " + why);
  registered.push_back(base);
#endif
  return success();
}

void setHostInputs([[maybe_unused]] HostInputs mode, [[maybe_unused]] uint64_t stageBytes) {
#ifdef LIFL_WITH_CUDA
  cuda::setHostInputs(static_cast<int>(mode), kPipelineFromBytes, stageBytes);
#endif
}

Result<void> unregisterHostMemory([[maybe_unused]] void* base) {
#ifdef LIFL_WITH_CUDA
  std::lock_guard lock(registryMutex);
  auto it = std::find(registered.begin(), registered.end(), base);
  if (it == registered.end()) return success();
  registered.erase(it);
  if (auto why = cuda::unregisterHost(base); !why.empty())
    return cudaError("cannot unregister host memory: " + why);
#endif
  return success();
}

Result<std::unique_ptr<Accumulator>> Accumulator::create(Backend backend, uint64_t n) {
#ifdef LIFL_WITH_CUDA
  if (backend == Backend::Cuda) {
    if (!cudaInfo().usable) return unavailable("no_gpu", "no CUDA device: " + cudaInfo().why);
    return CudaAccumulator::create(n);
  }
#else
  if (backend == Backend::Cuda)
    return unavailable("no_gpu", "the kernel library was built without nvcc");
#endif
  return std::unique_ptr<Accumulator>(new CpuAccumulator(n));
}

Result<std::unique_ptr<DeviceBuffer>> DeviceBuffer::upload(Backend backend, const void* data,
                                                           size_t bytes) {
#ifdef LIFL_WITH_CUDA
  if (backend == Backend::Cuda) {
    if (!cudaInfo().usable) return unavailable("no_gpu", "no CUDA device: " + cudaInfo().why);
    void* device = nullptr;
    if (auto why = cuda::upload(data, bytes, &device); !why.empty())
      return unavailable("gpu_memory", "cannot copy to the device: " + why);
    return std::unique_ptr<DeviceBuffer>(new CudaBuffer(device, bytes));
  }
#else
  if (backend == Backend::Cuda)
    return unavailable("no_gpu", "the kernel library was built without nvcc");
#endif
  return std::unique_ptr<DeviceBuffer>(new HostBuffer(data, bytes));
}

Result<uint64_t> countNonFinite(Backend backend, const void* x, DType dtype, uint64_t n) {
#ifdef LIFL_WITH_CUDA
  if (backend == Backend::Cuda && cudaInfo().usable) {
    uint64_t count = 0;
    if (auto why = cuda::countNonFinite(x, dtype, n, &count); !why.empty())
      return cudaError("finite check: " + why);
    return count;
  }
#endif
  (void)backend;
  return kernels::countNonFinite(x, dtype, n);
}

}  // namespace lifl::gpu
