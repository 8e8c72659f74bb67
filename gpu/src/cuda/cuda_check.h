// The CUDA side's one error style: calls return "" on success, else one line saying what
// failed (cuda_api.h); these macros return that line early. Shared by the .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>

namespace lifl::gpu::cuda {

inline std::string failed(cudaError_t e, const char* what) {
  return std::string(what) + ": " + cudaGetErrorString(e);
}

}  // namespace lifl::gpu::cuda

#define LIFL_CU(call)                                                   \
  do {                                                                  \
    cudaError_t e_ = (call);                                            \
    if (e_ != cudaSuccess) return ::lifl::gpu::cuda::failed(e_, #call); \
  } while (0)

#define LIFL_TRY_STR(expr)          \
  do {                              \
    std::string why_ = (expr);      \
    if (!why_.empty()) return why_; \
  } while (0)

namespace lifl::gpu::cuda {

/// The stream the kernels of this library launch on: the legacy default stream, or a model's
/// own stream while its forward pass runs (so that the pass can be captured into a CUDA
/// graph). Set for a scope with StreamScope.
inline thread_local cudaStream_t currentStreamValue = nullptr;
inline cudaStream_t currentStream() { return currentStreamValue; }
struct StreamScope {
  cudaStream_t saved;
  explicit StreamScope(cudaStream_t s) : saved(currentStreamValue) { currentStreamValue = s; }
  ~StreamScope() { currentStreamValue = saved; }
  StreamScope(const StreamScope&) = delete;
  StreamScope& operator=(const StreamScope&) = delete;
};

/// Programmatic dependent launch (sm_90): a kernel launched with launchDependent may be
/// scheduled while the kernel before it in the stream is still running. It does what does
/// not depend on that kernel (reading weights, page tables), then waitForPrerequisites()
/// before it reads anything an earlier kernel wrote; allowDependents() lets the next kernel
/// be scheduled. The launch latency and those prologues then overlap the previous kernel's
/// tail, which is most of a small decode step's gaps. LIFL_PDL=0 turns it off, for the
/// benchmarks' baseline.
inline bool programmaticLaunch() {
  static const bool on = [] {
    const char* v = std::getenv("LIFL_PDL");
    return !v || std::string_view(v) != "0";
  }();
  return on;
}

template <class... Params, class... Args>
cudaError_t launchDependent(void (*kernel)(Params...), dim3 blocks, dim3 threads, Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = blocks;
  config.blockDim = threads;
  config.stream = currentStream();
  config.attrs = &attribute;
  config.numAttrs = programmaticLaunch() ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

/// Both are no-ops in a kernel launched without launchDependent.
__device__ __forceinline__ void waitForPrerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void allowDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}
/// Where a kernel's prologue reads nothing that no earlier kernel wrote (most of them): it
/// waits, and lets the next be scheduled once past the wait (not before: launches piled up).
__device__ __forceinline__ void afterPrerequisites() {
  waitForPrerequisites();
  allowDependents();
}

/// Blocks of 256 threads for a grid-stride kernel over `work` items: enough to fill the GPU
/// (132 SMs x 16), never none.
inline unsigned grid(uint64_t work) {
  return static_cast<unsigned>(std::clamp<uint64_t>((work + 255) / 256, 1, 132 * 16));
}

/// A device buffer that grows as needed (RAII).
struct Buffer {
  Buffer() = default;
  Buffer(Buffer&& other) noexcept : p(other.p), bytes(other.bytes) {
    other.p = nullptr;
    other.bytes = 0;
  }
  Buffer& operator=(Buffer&&) = delete;
  void* p = nullptr;
  size_t bytes = 0;
  ~Buffer() { cudaFree(p); }
  std::string reserve(size_t want) {
    if (want <= bytes) return "";
    cudaFree(p);
    p = nullptr;
    bytes = 0;
    LIFL_CU(cudaMalloc(&p, want));
    bytes = want;
    return "";
  }
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

/// CUDA events, a stream and a graph, released with the scope.
struct TimingResources {
  cudaEvent_t start = nullptr, stop = nullptr;
  cudaStream_t stream = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  TimingResources() = default;
  TimingResources(const TimingResources&) = delete;
  TimingResources& operator=(const TimingResources&) = delete;
  ~TimingResources() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    if (stream) cudaStreamDestroy(stream);
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
  }
};

/// Mean seconds of `once()` (which launches work and returns "" or why it failed) over
/// `reps` calls, timed with CUDA events after one untimed call: issued one after another on
/// the stream, or (inGraph) captured into one CUDA graph and replayed, as the decode step
/// runs its kernels.
template <class F>
std::string timeLaunches(int reps, F&& once, double* seconds, bool inGraph = false) {
  LIFL_TRY_STR(once());
  TimingResources r;
  LIFL_CU(cudaEventCreate(&r.start));
  LIFL_CU(cudaEventCreate(&r.stop));
  if (inGraph) {
    LIFL_CU(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking));
    StreamScope scope(r.stream);
    LIFL_CU(cudaStreamBeginCapture(r.stream, cudaStreamCaptureModeThreadLocal));
    std::string why;
    for (int i = 0; i < reps && why.empty(); ++i) why = once();
    const cudaError_t ended = cudaStreamEndCapture(r.stream, &r.graph);
    LIFL_TRY_STR(why);
    LIFL_CU(ended);
    LIFL_CU(cudaGraphInstantiate(&r.exec, r.graph, 0));
    LIFL_CU(cudaGraphLaunch(r.exec, r.stream));  // untimed: the first replay uploads the graph
  }
  LIFL_CU(cudaEventRecord(r.start, r.stream));
  if (inGraph) {
    LIFL_CU(cudaGraphLaunch(r.exec, r.stream));
  } else {
    for (int i = 0; i < reps; ++i) LIFL_TRY_STR(once());
  }
  LIFL_CU(cudaEventRecord(r.stop, r.stream));
  LIFL_CU(cudaEventSynchronize(r.stop));
  float ms = 0;
  LIFL_CU(cudaEventElapsedTime(&ms, r.start, r.stop));
  *seconds = ms / 1e3 / reps;
  return "";
}

}  // namespace lifl::gpu::cuda
