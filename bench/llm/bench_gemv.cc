// The linear layers of decode on the GPU (docs/benchmarks.md "LLM"): y = x W^T at batch 1
// (and 16) for the launches of a Llama-3.2-1B decode step (q/k/v and gate/up stacked, as the
// engine runs them), and at batch 1 for Llama-3-8B's, with W in BF16, int8 and int4 (groups
// of 128), beside cuBLAS GemmEx on BF16 in the same run. GB/s counts the weight bytes (with
// the scales) read once.
//
//   bench_gemv [--reps 200]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
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
  // The launches of a decode step: q, k and v stacked into one matrix, gate and up into
  // another (as the engine uploads them), o, down and the head.
  struct Shape {
    const char* name;
    uint64_t in, out;
  } shapes[] = {{"qkv 2048->3072", 2048, 3072},
                {"o 2048x2048", 2048, 2048},
                {"gate+up 2048->16384", 2048, 16384},
                {"down 8192->2048", 8192, 2048},
                {"head 2048->128256", 2048, 128256}},
    larger[] = {{"8B qkv 4096->6144", 4096, 6144},
                {"8B o 4096x4096", 4096, 4096},
                {"8B gate+up 4096->28672", 4096, 28672},
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
  // Each kernel timed three ways: launches one after another; replayed from a CUDA graph, as
  // the decode step runs them; and replayed from a graph with cold weights, each launch
  // reading another copy (copies of 4 x the L2 cache), so that they come from HBM as in a
  // decode step, where a layer's weights are evicted by the other layers' before they are
  // read again. A matrix smaller than the 50 MB L2 read again and again is served from it.
  // The layer's row sums the launches of one transformer layer (all but the head).
  auto table = [&](uint64_t rows, std::span<const Shape> list) {
    std::printf("\nbatch %llu\n%-22s %-12s %8s %8s %9s %8s %9s %8s %9s\n",
                static_cast<unsigned long long>(rows), "shape", "kernel", "us", "GB/s", "vs cuBLAS",
                "graph us", "vs cuBLAS", "cold us", "vs cuBLAS");
    double layer[4][3] = {};
    for (const auto& s : list) {
      const bool head = s.out > 100000;
      double base[3] = {};
      for (size_t k = 0; k < std::size(kinds); ++k) {
        const auto& kind = kinds[k];
        auto t = lifl::gpu::llm::timeLinear(kind.kind, rows, s.in, s.out, reps);
        auto g = lifl::gpu::llm::timeLinear(kind.kind, rows, s.in, s.out, reps, true);
        auto c = lifl::gpu::llm::timeLinear(kind.kind, rows, s.in, s.out, reps, true, true);
        if (!t || !g || !c) {
          std::printf("%-22s %-12s %s\n", s.name, kind.name,
                      (!t   ? t.error()
                       : !g ? g.error()
                            : c.error())
                          .detail.c_str());
          continue;
        }
        const double us[3] = {t.value() * 1e6, g.value() * 1e6, c.value() * 1e6};
        if (kind.kind == 0) std::copy(us, us + 3, base);
        for (int i = 0; i < 3 && !head; ++i) layer[k][i] += us[i];
        const double bytes = kind.bytesPerWeight * s.in * s.out;
        std::printf("%-22s %-12s %8.1f %8.1f %8.2fx %8.1f %8.2fx %8.1f %8.2fx\n", s.name, kind.name,
                    us[0], bytes / t.value() / 1e9, base[0] / us[0], us[1], base[1] / us[1], us[2],
                    base[2] / us[2]);
      }
    }
    for (size_t k = 0; k < std::size(kinds); ++k)
      std::printf("%-22s %-12s %8.1f %8s %8.2fx %8.1f %8.2fx %8.1f %8.2fx\n", "a layer's launches",
                  kinds[k].name, layer[k][0], "", layer[0][0] / layer[k][0], layer[k][1],
                  layer[0][1] / layer[k][1], layer[k][2], layer[0][2] / layer[k][2]);
  };
  table(1, shapes);
  table(16, shapes);
  table(1, larger);
  return 0;
}
