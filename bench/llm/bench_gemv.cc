// The linear layers of decode on the GPU (docs/benchmarks.md "LLM"): y = x W^T at batch 1
// (and 16) for Llama-3.2-1B's matrix shapes, and at batch 1 for Llama-3-8B's (8-29 MB of
// int4: where the kernel, not the launch, sets the time), with W in BF16, int8 and int4
// (groups of 128), beside cuBLAS GemmEx on BF16 in the same run. GB/s counts the weight bytes
// (with the scales) read once.
//
//   bench_gemv [--reps 200]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>

#include "lifl/gpu/llm_device.h"

int main(int argc, char** argv) {
  int reps = 200;
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
  if (!lifl::gpu::cudaInfo().usable) {
    std::printf("bench_gemv: no CUDA device (%s)\n", lifl::gpu::cudaInfo().why.c_str());
    return 0;
  }
  struct Shape {
    const char* name;
    uint64_t in, out;
  } shapes[] = {{"q/o 2048x2048", 2048, 2048},
                {"gate/up 2048->8192", 2048, 8192},
                {"down 8192->2048", 8192, 2048},
                {"head 2048->128256", 2048, 128256}},
    larger[] = {{"8B q/o 4096x4096", 4096, 4096},
                {"8B gate/up 4096->14336", 4096, 14336},
                {"8B down 14336->4096", 14336, 4096}};
  const struct {
    int kind;
    const char* name;
    double bytesPerWeight;
  } kinds[] = {{0, "cuBLAS BF16", 2},
               {16, "LIFL BF16", 2},
               {8, "LIFL int8", 1 + 4.0 / 128},
               {4, "LIFL int4", 0.5 + 4.0 / 128}};
  // The floor under every figure below: a kernel that does nothing but wait for the one
  // before (programmatic dependent launch, as LIFL's kernels are launched), on the grid of
  // the int4 kernel for q/o (128 blocks of 512 threads).
  {
    auto t = lifl::gpu::llm::timeLaunchFloor(128, 512, reps);
    auto g = lifl::gpu::llm::timeLaunchFloor(128, 512, reps, true);
    if (t && g)
      std::printf("launch floor (an empty kernel, 128 x 512 threads): %.1f us, graph %.1f us\n",
                  t.value() * 1e6, g.value() * 1e6);
  }
  // Each kernel timed twice: launches one after another, and replayed from a CUDA graph, as
  // the decode step runs them (the baseline likewise).
  auto table = [&](uint64_t rows, std::span<const Shape> list) {
    std::printf("\nbatch %llu\n%-22s %-12s %10s %10s %12s %10s %12s\n",
                static_cast<unsigned long long>(rows), "shape", "kernel", "us", "GB/s", "vs cuBLAS",
                "graph us", "vs cuBLAS");
    for (const auto& s : list) {
      double base = 0, baseGraph = 0;
      for (const auto& k : kinds) {
        auto t = lifl::gpu::llm::timeLinear(k.kind, rows, s.in, s.out, reps);
        auto g = lifl::gpu::llm::timeLinear(k.kind, rows, s.in, s.out, reps, true);
        if (!t || !g) {
          std::printf("%-22s %-12s %s\n", s.name, k.name,
                      (!t ? t.error() : g.error()).detail.c_str());
          continue;
        }
        if (k.kind == 0) {
          base = t.value();
          baseGraph = g.value();
        }
        const double bytes = k.bytesPerWeight * s.in * s.out;
        std::printf("%-22s %-12s %10.1f %10.1f %11.2fx %10.1f %9.2fx\n", s.name, k.name,
                    t.value() * 1e6, bytes / t.value() / 1e9, base > 0 ? base / t.value() : 0.0,
                    g.value() * 1e6, baseGraph > 0 ? baseGraph / g.value() : 0.0);
      }
    }
  };
  table(1, shapes);
  table(16, shapes);
  table(1, larger);
  return 0;
}
