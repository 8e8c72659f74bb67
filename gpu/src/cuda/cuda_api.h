// The CUDA side of the kernel library, as seen from the C++ side (gpu/src/device.cc): plain
// types only, so that nvcc never compiles the project's other headers. Every call returns ""
// on success, else one line saying what failed (the CUDA error text included).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "lifl/gpu/accumulate.h"

namespace lifl::gpu::cuda {

struct Probe {
  bool usable = false;
  int devices = 0;
  int multiprocessors = 0;
  std::string device;  ///< its name
  std::string why;     ///< why not usable
};
Probe probe();

std::string allocate(uint64_t floats, float** device);
void release(float* device);
/// Device memory holding a copy of `bytes` of host data.
std::string upload(const void* data, size_t bytes, void** device);
void releaseBytes(void* device);
std::string copyIn(void* device, const void* host, size_t bytes);

/// acc[0, n) = (first ? 0 : acc) + sum_k w_k x_k on the device. The inputs may be in device
/// memory, in host memory registered with registerHost (read by the kernel through its
/// mapping: zero-copy), or in other host memory (copied to the device first, slowly).
/// Returns after the device is done with the inputs.
std::string fold(float* acc, const kernels::FoldInput* inputs, size_t count, uint64_t n,
                 bool first);
/// out[i] = acc[i] * scale (+ base[i]); out and base anywhere (as the inputs of fold).
std::string scaleInto(float* out, const float* acc, uint64_t n, double scale, const float* base);
/// Copies n sums to memory anywhere.
std::string copyOut(float* out, const float* acc, uint64_t n);
/// Pins host memory and maps it for the device (once per range and process).
std::string registerHost(void* base, size_t bytes);
std::string unregisterHost(void* base);
/// 0: auto (pipelined from `fromBytes` of registered input per launch; 0: never), 1: always
/// zero-copy, 2: always pipelined.
void setHostInputs(int mode, uint64_t fromBytes, uint64_t stageBytes);
std::string countNonFinite(const void* x, DType dtype, uint64_t n, uint64_t* count);

}  // namespace lifl::gpu::cuda
