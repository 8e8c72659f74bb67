// Where the kernel library computes: the CUDA backend when the library was built with nvcc and
// a driver and device are present, the CPU reference otherwise (or when asked). Callers see
// no CUDA: an Accumulator is an fp32 sum of n values that updates are folded into, held in
// device memory (CUDA, copied back once per batch or round) or in host memory (CPU), with
// the same calls and results within the tolerances in docs/gpu.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "lifl/common/error.h"
#include "lifl/gpu/accumulate.h"

namespace lifl::gpu {

enum class Backend { Cpu, Cuda };
const char* backendName(Backend b);

/// What the CUDA backend found, probed once per process (and logged once).
struct CudaInfo {
  bool built = false;   ///< the library was compiled with nvcc
  bool usable = false;  ///< a driver and at least one device answered
  std::string device;   ///< the device's name
  int multiprocessors = 0;
  std::string why;  ///< why it is not usable
};
const CudaInfo& cudaInfo();

/// Cuda when asked for and usable, else Cpu (with a log line saying why, once).
Backend pickBackend(bool wantCuda);

/// Pins host memory (the node's store segment) and maps it for the device, once per process
/// and range, so that CUDA kernels read updates in it without staging (zero-copy). Nothing
/// on the CPU backend.
Result<void> registerHostMemory(void* base, size_t bytes);
/// How CUDA folds read registered host memory: through its mapping in the kernel (zero-copy),
/// or copied in chunks with cudaMemcpyAsync on 3 streams, overlapped with the fold
/// (pipelined). Auto picks by the input bytes of a launch, at the crossover bench_gpu
/// measured (docs/gpu.md).
enum class HostInputs { Auto, ZeroCopy, Pipelined };
/// `stageBytes`: each of the pipeline's 3 device buffers (a chunk of every input of a launch).
void setHostInputs(HostInputs mode, uint64_t stageBytes = 64ull << 20);

/// Undoes registerHostMemory; call it before the memory is unmapped.
Result<void> unregisterHostMemory(void* base);

class Accumulator {
 public:
  static Result<std::unique_ptr<Accumulator>> create(Backend backend, uint64_t n);
  virtual ~Accumulator() = default;
  virtual Backend backend() const = 0;
  uint64_t size() const { return n_; }

  /// The N-input fused fold into values [at, at + n): acc = (first ? 0 : acc) + sum_k w_k
  /// x_k, inputs in order (kernels::accumulateMany's contract). Inputs in host memory (the
  /// store: read by the device through its mapping) or, on CUDA, device memory.
  virtual Result<void> fold(uint64_t at, const kernels::FoldInput* inputs, size_t count, uint64_t n,
                            bool first) = 0;
  /// out[i] = acc[i] * scale (+ base[i]) over all values; out and base in host memory.
  virtual Result<void> scaleInto(float* out, double scale, const float* base) = 0;
  /// Copies the sums to host memory (a partial's accumulator).
  virtual Result<void> copyTo(float* out) = 0;

 protected:
  explicit Accumulator(uint64_t n) : n_(n) {}
  uint64_t n_;
};

/// A copy of host data where the backend computes (device memory on CUDA, host memory on
/// the CPU): inputs that stay resident, e.g. for the device-resident benchmarks.
class DeviceBuffer {
 public:
  static Result<std::unique_ptr<DeviceBuffer>> upload(Backend backend, const void* data,
                                                      size_t bytes);
  virtual ~DeviceBuffer() = default;
  /// Valid as a FoldInput's values or scales with an Accumulator of the same backend.
  virtual const void* data() const = 0;
  /// Copies `bytes` of host memory over the buffer's start (what a staged transfer costs:
  /// pinned when the memory was registered, pageable otherwise); returns when done.
  virtual Result<void> copyFrom(const void* host, size_t bytes) = 0;
};

/// NaN/Inf values among n elements of `dtype` at x, on the device when the backend is CUDA.
Result<uint64_t> countNonFinite(Backend backend, const void* x, DType dtype, uint64_t n);

}  // namespace lifl::gpu
