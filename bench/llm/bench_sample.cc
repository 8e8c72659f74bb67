// Sampling a token from a decode step's logits on the host (kernels::llm::sample, the decode
// stage's choice for requests with a temperature; docs/benchmarks.md "LLM sampling"), at
// Llama 3's vocabulary of 128 256, beside the way it was done before in the same run: the
// whole vocabulary sorted by logit, then the softmax, the nucleus and the draw over it.
// Logits are normal with a standard deviation of 3 (fixed seed); ms a token over `reps`.
//
//   bench_sample [--reps 50]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "lifl/gpu/llm.h"

namespace {

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// The baseline: every candidate sorted first (partial_sort over all of them).
uint32_t sortedSample(const float* logits, uint32_t vocab, float temperature, uint32_t topK,
                      float topP, uint64_t& rng) {
  std::vector<uint32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0u);
  const uint32_t keep = topK ? std::min(topK, vocab) : vocab;
  std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                    [&](uint32_t a, uint32_t b) { return logits[a] > logits[b]; });
  order.resize(keep);
  std::vector<double> p(keep);
  const double top = logits[order[0]];
  double total = 0;
  for (uint32_t i = 0; i < keep; ++i)
    total += (p[i] = std::exp((logits[order[i]] - top) / temperature));
  uint32_t cut = keep;
  if (topP > 0.0f && topP < 1.0f) {
    double mass = 0;
    for (uint32_t i = 0; i < keep; ++i)
      if ((mass += p[i] / total) >= topP) {
        cut = i + 1;
        break;
      }
  }
  double kept = 0;
  for (uint32_t i = 0; i < cut; ++i) kept += p[i];
  const double u = static_cast<double>(splitmix64(rng) >> 11) * 0x1.0p-53 * kept;
  double acc = 0;
  for (uint32_t i = 0; i < cut; ++i)
    if ((acc += p[i]) > u) return order[i];
  return order[cut - 1];
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 50;
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
  const uint32_t vocab = 128256;
  std::vector<float> logits(vocab);
  std::mt19937 gen(1);
  std::normal_distribution<float> normal(0.f, 3.f);
  for (float& x : logits) x = normal(gen);
  struct Setting {
    const char* name;
    float t;
    uint32_t topK;
    float topP;
  } settings[] = {{"T 1 (the API's default)", 1.0f, 0, 1.0f},
                  {"T 1, top_p 0.9", 1.0f, 0, 0.9f},
                  {"T 0.8, top_k 50, top_p 0.9", 0.8f, 50, 0.9f}};
  auto msPerToken = [&](auto&& draw) {
    uint64_t rng = 5, sink = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) sink += draw(rng);
    const auto t1 = std::chrono::steady_clock::now();
    if (sink == 42) std::printf(" ");  // keeps the draws
    return std::chrono::duration<double, std::milli>(t1 - t0).count() / reps;
  };
  std::printf("vocab %u, ms a token (%d draws)\n%-30s %12s %12s %8s\n", vocab, reps, "setting",
              "sorted (before)", "LIFL", "gain");
  for (const auto& s : settings) {
    const double before = msPerToken([&](uint64_t& rng) {
      return sortedSample(logits.data(), vocab, s.t, s.topK, s.topP, rng);
    });
    const double now = msPerToken([&](uint64_t& rng) {
      return lifl::kernels::llm::sample(logits.data(), vocab, s.t, s.topK, s.topP, rng);
    });
    std::printf("%-30s %12.2f %12.2f %7.1fx\n", s.name, before, now, before / now);
  }
  return 0;
}
