// KV retrieval at long context (docs/benchmarks.md "LLM KV retrieval"): one layer of
// Llama-3.2-1B's attention shape (32 query heads, 8 KV heads, head_dim 64) over a cache of
// `context` positions, on the CPU path. Per decode step: full attention, retrieval as
// configured (re-selecting when the queries' mean cosine falls below tau), and retrieval at
// every step (tau above any cosine); the step time of each, and the attention output's
// relative L2 error against full attention. Beside them, the oracle: the same budget of
// positions with the highest exact scores (what no selection of that size can beat).
//
// The cache is synthetic with the structure retrieval relies on (random weights have none):
// keys come in runs of 64 positions on one of 256 topic directions per KV head, plus noise;
// each step's queries follow the topic of some run of the prompt, per KV head, and move to
// another every 8 steps. Their scale puts about 95% of the attention on the topic's keys, as
// in the retrieval heads that LouisKV targets (at scale 1 most of it is spread evenly over the
// context, where no selection can be right).
//
//   bench_retrieval [--context 32768] [--steps 32] [--budget 2048] [--tau 0.7]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "bench_util.h"
#include "lifl/gpu/llm.h"
#include "retrieval.h"

namespace kl = lifl::kernels::llm;

int main(int argc, char** argv) {
  uint32_t context = 32768, steps = 32, budget = 2048;
  double tau = 0.7;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--context")) context = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--budget")) budget = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--tau")) tau = std::atof(argv[i + 1]);
  }
  const uint32_t heads = 32, kvHeads = 8, hd = 64, topics = 256, run = 64, topicSteps = 8;
  const uint32_t group = heads / kvHeads, prompt = context - steps;
  const uint32_t pages = (context + kl::kPageTokens - 1) / kl::kPageTokens;
  const uint64_t row = uint64_t{kvHeads} * hd;
  std::vector<float> k(uint64_t{pages} * kl::kPageTokens * row), v(k.size());
  std::vector<uint32_t> table(pages);
  for (uint32_t p = 0; p < pages; ++p) table[p] = (p * 7919u) % pages;  // scattered pages
  std::mt19937 rng(7);
  std::normal_distribution<float> n01(0.f, 1.f);
  std::vector<float> centre(uint64_t{kvHeads} * topics * hd);
  for (auto& c : centre) c = n01(rng);
  const kl::KvPages cache{k.data(), v.data(), kvHeads, hd};
  std::uniform_int_distribution<uint32_t> pick(0, topics - 1);
  std::vector<std::vector<uint32_t>> runTopics;  // [run][KV head]
  for (uint32_t t = 0; t < context; t += run) {
    std::vector<uint32_t> topic(kvHeads);
    for (auto& z : topic) z = pick(rng);
    runTopics.push_back(topic);
    for (uint32_t u = t; u < std::min(context, t + run); ++u) {
      float* kr = cache.kRow(table[u / kl::kPageTokens], u % kl::kPageTokens);
      float* vr = cache.vRow(table[u / kl::kPageTokens], u % kl::kPageTokens);
      for (uint32_t h = 0; h < kvHeads; ++h)
        for (uint32_t d = 0; d < hd; ++d) {
          kr[h * hd + d] =
              0.5f * centre[(uint64_t{h} * topics + topic[h]) * hd + d] + 0.5f * n01(rng);
          vr[h * hd + d] = n01(rng);
        }
    }
  }
  std::printf("bench_retrieval: context %u, %u steps, budget %u, tau %.2f (CPU, one layer)\n",
              context, steps, budget, tau);
  auto make = [&](double t) {
    lifl::llm::RetrievalConfig config;
    config.budget = budget;
    config.tau = t;
    auto r = std::make_unique<lifl::llm::SequenceRetrieval>(config, 1, heads, kvHeads, hd);
    auto clustered =
        r->clusterPrompt([&](uint32_t) { return cache; }, table, prompt, lifl::gpu::Backend::Cpu);
    if (!clustered) {
      std::fprintf(stderr, "clustering failed: %s\n", clustered.error().detail.c_str());
      std::exit(1);
    }
    return r;
  };
  const double c0 = lifl::bench::now();
  auto configured = make(tau);
  const double clusterSeconds = lifl::bench::now() - c0;
  // The same k-means on the device, where there is one (the GPU path's clustering).
  double deviceClusterSeconds = -1;
  if (lifl::gpu::cudaInfo().usable) {
    lifl::llm::RetrievalConfig config;
    config.budget = budget;
    lifl::llm::SequenceRetrieval onDevice(config, 1, heads, kvHeads, hd);
    const double d0 = lifl::bench::now();
    if (onDevice.clusterPrompt([&](uint32_t) { return cache; }, table, prompt,
                               lifl::gpu::Backend::Cuda))
      deviceClusterSeconds = lifl::bench::now() - d0;
  }
  auto everyStep = make(2.0);
  std::vector<float> q(uint64_t{heads} * hd), full(q.size()), got(q.size());
  std::vector<uint32_t> topic(kvHeads);
  double tFull = 0, tConf = 0, tEvery = 0, sEvery = 0, eConf = 0, eEvery = 0, eOracle = 0;
  // The oracle's positions per KV head: sinks, the recent window, and the `budget` prompt
  // positions of highest mean q . k over the group's heads.
  auto oracle = [&](uint32_t pos) {
    std::vector<std::vector<uint32_t>> at(kvHeads);
    const lifl::llm::RetrievalConfig defaults;
    for (uint32_t h = 0; h < kvHeads; ++h) {
      std::vector<std::pair<float, uint32_t>> scored;
      for (uint32_t t = defaults.sinks; t + defaults.recent <= pos; ++t) {
        const float* kr = cache.kRow(table[t / kl::kPageTokens], t % kl::kPageTokens) + h * hd;
        float sc = 0;
        for (uint32_t g = 0; g < group; ++g)
          for (uint32_t d = 0; d < hd; ++d) sc += q[(h * group + g) * hd + d] * kr[d];
        scored.emplace_back(sc, t);
      }
      const size_t keep = std::min<size_t>(budget, scored.size());
      std::partial_sort(scored.begin(), scored.begin() + keep, scored.end(),
                        [](const auto& a, const auto& b) { return a.first > b.first; });
      for (uint32_t t = 0; t < defaults.sinks; ++t) at[h].push_back(t);
      for (size_t i = 0; i < keep; ++i) at[h].push_back(scored[i].second);
      for (uint32_t t = pos + 1 - defaults.recent; t <= pos; ++t) at[h].push_back(t);
      std::sort(at[h].begin(), at[h].end());
    }
    return at;
  };
  auto relative = [&](const std::vector<float>& a) {
    double err = 0, norm = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      err += (double(a[i]) - full[i]) * (double(a[i]) - full[i]);
      norm += double(full[i]) * full[i];
    }
    return std::sqrt(err / norm);
  };
  for (uint32_t s = 0; s < steps; ++s) {
    if (s % topicSteps == 0)  // the topic of some run of the prompt, per KV head
      for (uint32_t h = 0; h < kvHeads; ++h)
        topic[h] = runTopics[std::uniform_int_distribution<uint32_t>(0, prompt / run - 1)(rng)][h];
    for (uint32_t h = 0; h < heads; ++h)
      for (uint32_t d = 0; d < hd; ++d)
        q[h * hd + d] = 2.f * centre[(uint64_t{h / group} * topics + topic[h / group]) * hd + d] +
                        0.3f * n01(rng);
    const uint32_t pos = prompt + s;
    double t0 = lifl::bench::now();
    kl::attention(full.data(), q.data(), 1, &pos, heads, cache, table);
    tFull += lifl::bench::now() - t0;
    t0 = lifl::bench::now();
    kl::attentionAt(got.data(), q.data(), heads, cache, table,
                    configured->select(0, q.data(), pos, cache, table));
    tConf += lifl::bench::now() - t0;
    eConf += relative(got);
    t0 = lifl::bench::now();
    const auto& selected = everyStep->select(0, q.data(), pos, cache, table);
    sEvery += lifl::bench::now() - t0;
    kl::attentionAt(got.data(), q.data(), heads, cache, table, selected);
    tEvery += lifl::bench::now() - t0;
    eEvery += relative(got);
    kl::attentionAt(got.data(), q.data(), heads, cache, table, oracle(pos));
    eOracle += relative(got);
  }
  std::printf("prompt clustering (k-means, ~16 tokens a unit): %.2f s on the CPU", clusterSeconds);
  if (deviceClusterSeconds >= 0)
    std::printf(", %.4f s on the GPU (%.0fx)", deviceClusterSeconds,
                clusterSeconds / deviceClusterSeconds);
  std::printf("\n");
  std::printf("%-34s %12s %14s %12s\n", "attention", "ms / step", "rel. L2 error", "retrievals");
  std::printf("%-34s %12.3f %14s %12s\n", "full", tFull / steps * 1e3, "0", "-");
  std::printf("%-34s %12.3f %14.2e %12llu\n", "retrieval (tau as given)", tConf / steps * 1e3,
              eConf / steps, static_cast<unsigned long long>(configured->retrievals()));
  std::printf("%-34s %12.3f %14.2e %12llu\n", "retrieval at every step", tEvery / steps * 1e3,
              eEvery / steps, static_cast<unsigned long long>(everyStep->retrievals()));
  std::printf("%-34s %12s %14.2e %12s\n", "oracle: top scores, same budget", "-", eOracle / steps,
              "-");
  std::printf("selection alone, at every step (the host's part on the GPU path): %.3f ms\n",
              sEvery / steps * 1e3);
  return 0;
}
