// The CUDA side's one error style: calls return "" on success, else one line saying what
// failed (cuda_api.h); these macros return that line early. Shared by the .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <string>

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

/// Mean seconds of `once()` (which launches work and returns "" or why it failed) over
/// `reps` calls, timed with CUDA events after one untimed call.
template <class F>
std::string timeLaunches(int reps, F&& once, double* seconds) {
  LIFL_TRY_STR(once());
  cudaEvent_t start, stop;
  LIFL_CU(cudaEventCreate(&start));
  LIFL_CU(cudaEventCreate(&stop));
  LIFL_CU(cudaEventRecord(start));
  for (int r = 0; r < reps; ++r) LIFL_TRY_STR(once());
  LIFL_CU(cudaEventRecord(stop));
  LIFL_CU(cudaEventSynchronize(stop));
  float ms = 0;
  LIFL_CU(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  *seconds = ms / 1e3 / reps;
  return "";
}

}  // namespace lifl::gpu::cuda
