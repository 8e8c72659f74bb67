/* The C roofline of the aggregation kernel: the plainest loop, compiled with -O3
 * -march=native (see bench/CMakeLists.txt), against which lifl::kernels::accumulate is
 * measured in the same run. */
#include <stddef.h>

void roofline_accumulate(float* restrict acc, const float* restrict x, size_t n, float w) {
  for (size_t i = 0; i < n; ++i) acc[i] += w * x[i];
}
