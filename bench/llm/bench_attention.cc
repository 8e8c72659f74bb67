// Decode attention over the paged KV cache on the GPU (docs/benchmarks.md "LLM"): one query
// token per sequence attending to `context` cached positions, at the KV shape of
// Llama-3.2-1B (32 query heads, 8 KV heads, head_dim 64), with BF16 pages (the default) and
// fp32 pages in the same run. GB/s counts the K and V bytes read once; the fraction is of the
// H100's 3.35 TB/s. Each figure twice: launches one after another, and replayed from a CUDA
// graph (as the decode step runs); "BF16 gain" is fp32's graph time over BF16's.
//
// Then KV retrieval's attention at batch 1: each KV head gathers sinks + a 2048-token budget
// + a 32-token window of rows from the cache in pinned host memory (zero-copy reads over
// PCIe), then attends over them, beside full attention over the device-resident cache.
//
//   bench_attention [--batch 8] [--reps 50]
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "lifl/gpu/llm_device.h"

int main(int argc, char** argv) {
  uint32_t batch = 8;
  int reps = 50;
  for (int i = 1; i + 1 < argc; ++i) {
    if (!std::strcmp(argv[i], "--batch")) batch = static_cast<uint32_t>(std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
  }
  if (!lifl::gpu::cudaInfo().usable) {
    std::printf("bench_attention: no CUDA device (%s)\n", lifl::gpu::cudaInfo().why.c_str());
    return 0;
  }
  const uint32_t heads = 32, kvHeads = 8, headDim = 64;
  using lifl::gpu::llm::KvDtype;
  std::printf("decode attention, batch %u, %u heads / %u KV heads, head_dim %u\n", batch, heads,
              kvHeads, headDim);
  // Launched one after another, and replayed from a CUDA graph as the decode step runs them
  // (no launch gaps between the kernels of a graph's nodes).
  std::printf("%10s %6s %10s %10s %14s %10s %14s %10s\n", "context", "KV", "us", "KV GB/s",
              "of 3.35 TB/s", "graph us", "of 3.35 TB/s", "BF16 gain");
  for (uint32_t context : {1024u, 4096u, 16384u, 32768u}) {
    double f32Graph = 0;
    for (KvDtype dtype : {KvDtype::F32, KvDtype::Bf16}) {
      using lifl::gpu::llm::timeDecodeAttention;
      const bool bf16 = dtype == KvDtype::Bf16;
      auto t = timeDecodeAttention(batch, heads, kvHeads, headDim, context, dtype, reps);
      auto g = timeDecodeAttention(batch, heads, kvHeads, headDim, context, dtype, reps, true);
      if (!t || !g) {
        std::printf("%10u  %s\n", context, (!t ? t.error() : g.error()).detail.c_str());
        continue;
      }
      const double bytes = 2.0 * batch * context * kvHeads * headDim * (bf16 ? 2 : 4);
      std::printf("%10u %6s %10.1f %10.1f %13.1f%% %10.1f %13.1f%%", context,
                  bf16 ? "bf16" : "fp32", t.value() * 1e6, bytes / t.value() / 1e9,
                  bytes / t.value() / 3.35e12 * 100, g.value() * 1e6,
                  bytes / g.value() / 3.35e12 * 100);
      if (bf16 && f32Graph > 0)
        std::printf(" %9.2fx\n", f32Graph / g.value());
      else
        std::printf("\n");
      if (!bf16) f32Graph = g.value();
    }
  }
  // A step that re-selects gathers the rows over PCIe; the others attend over the rows
  // already on the device. At a re-selection every 8 steps (the tau trigger of
  // bench_retrieval's 32K run), a mean step is (gather + 7 x attention) / 8.
  const uint32_t rows = 4 + 2048 + 32;
  std::printf("\nKV retrieval, batch 1, BF16 pages: %u rows a KV head, from pinned host memory\n",
              rows);
  std::printf("%10s %14s %16s %16s %18s\n", "context", "full us", "re-select us", "retrieved us",
              "mean of 8 vs full");
  for (uint32_t context : {4096u, 16384u, 32768u}) {
    using lifl::gpu::llm::timeRetrievedAttention;
    auto full = lifl::gpu::llm::timeDecodeAttention(1, heads, kvHeads, headDim, context,
                                                    KvDtype::Bf16, reps);
    auto gathered =
        timeRetrievedAttention(heads, kvHeads, headDim, context, rows, true, KvDtype::Bf16, reps);
    auto kept =
        timeRetrievedAttention(heads, kvHeads, headDim, context, rows, false, KvDtype::Bf16, reps);
    if (!full || !gathered || !kept) {
      std::printf("%10u  %s\n", context,
                  (!full       ? full.error()
                   : !gathered ? gathered.error()
                               : kept.error())
                      .detail.c_str());
      continue;
    }
    const double mean = (gathered.value() + 7 * kept.value()) / 8;
    std::printf("%10u %14.1f %16.1f %16.1f %17.2fx\n", context, full.value() * 1e6,
                gathered.value() * 1e6, kept.value() * 1e6, full.value() / mean);
  }
  return 0;
}
