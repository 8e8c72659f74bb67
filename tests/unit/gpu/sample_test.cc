// kernels::llm::sample, the decode stage's sampling, against the distribution it must draw
// from, computed here by another route: the logits in descending order, the top_k of them,
// softmax(logits / T) over those in double precision, then the smallest prefix whose mass
// reaches top_p, renormalised. Each setting draws N tokens from a fixed seed; a token's
// frequency must be within 5 standard deviations of its probability, sqrt(p (1 - p) / N),
// and a token outside the allowed set must never be drawn.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "lifl/gpu/llm.h"

namespace lifl::kernels::llm {
namespace {

std::vector<double> reference(const std::vector<float>& logits, double t, uint32_t topK,
                              double topP) {
  const size_t n = logits.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return logits[a] > logits[b]; });
  const size_t keep = topK ? std::min<size_t>(topK, n) : n;
  std::vector<double> w(keep);
  double total = 0;
  for (size_t i = 0; i < keep; ++i)
    total += w[i] = std::exp((double{logits[order[i]]} - logits[order[0]]) / t);
  size_t cut = keep;
  if (topP > 0 && topP < 1) {
    double mass = 0;
    for (size_t i = 0; i < keep; ++i)
      if ((mass += w[i] / total) >= topP) {
        cut = i + 1;
        break;
      }
  }
  double kept = 0;
  for (size_t i = 0; i < cut; ++i) kept += w[i];
  std::vector<double> p(n, 0.0);
  for (size_t i = 0; i < cut; ++i) p[order[i]] = w[i] / kept;
  return p;
}

/// Draws n tokens and checks their frequencies against reference(); returns the counts.
std::vector<uint64_t> drawAndCheck(const std::vector<float>& logits, float t, uint32_t topK,
                                   float topP, uint64_t n) {
  const auto p = reference(logits, t, topK, topP);
  std::vector<uint64_t> count(logits.size(), 0);
  uint64_t rng = 0x5eed;
  for (uint64_t i = 0; i < n; ++i) {
    const uint32_t token =
        sample(logits.data(), static_cast<uint32_t>(logits.size()), t, topK, topP, rng);
    EXPECT_LT(token, logits.size());
    if (token < logits.size()) ++count[token];
  }
  for (size_t i = 0; i < logits.size(); ++i) {
    const double freq = static_cast<double>(count[i]) / static_cast<double>(n);
    if (p[i] == 0) {
      EXPECT_EQ(count[i], 0u) << "token " << i << " is outside the allowed set";
      continue;
    }
    EXPECT_NEAR(freq, p[i], 5 * std::sqrt(p[i] * (1 - p[i]) / static_cast<double>(n)))
        << "token " << i << ", T " << t << ", top_k " << topK << ", top_p " << topP;
  }
  return count;
}

TEST(Sample, DrawsFromTheTemperedTopKAndNucleusDistribution) {
  const std::vector<float> logits = {1.5f, -0.3f, 2.2f, 0.9f,  -1.7f, 0.1f,
                                     2.0f, -0.8f, 1.1f, -2.5f, 0.6f,  1.8f};
  struct Setting {
    float t;
    uint32_t topK;
    float topP;
  };
  // Every token in play (drawn without sorting), a lower temperature, the top 5, the 80%
  // nucleus, and both together.
  for (const Setting s : {Setting{1.0f, 0, 1.0f}, Setting{0.7f, 0, 1.0f}, Setting{1.0f, 5, 1.0f},
                          Setting{1.0f, 0, 0.8f}, Setting{1.3f, 6, 0.7f}})
    drawAndCheck(logits, s.t, s.topK, s.topP, 200000);
}

// A flat distribution over 3 000 tokens: the 90% nucleus holds most of them, past the first
// sorted prefixes of 256 and 1 024 (each grown 4x).
TEST(Sample, NucleusBeyondTheFirstSortedPrefixes) {
  std::vector<float> logits(3000);
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0.f, 0.3f);
  for (float& x : logits) x = normal(gen);
  const auto p = reference(logits, 1.0, 0, 0.9);
  const auto allowed = std::count_if(p.begin(), p.end(), [](double v) { return v > 0; });
  ASSERT_GT(allowed, 1024);
  const uint64_t n = 4000;
  const auto count = drawAndCheck(logits, 1.0f, 0, 0.9f, n);
  // The mass of the 100 most likely tokens, as one frequency.
  std::vector<size_t> order(logits.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
  double mass = 0, drawn = 0;
  for (size_t i = 0; i < 100; ++i) {
    mass += p[order[i]];
    drawn += static_cast<double>(count[order[i]]);
  }
  EXPECT_NEAR(drawn / n, mass, 5 * std::sqrt(mass * (1 - mass) / n));
}

TEST(Sample, GreedyIsTheFirstMaximumAndASeedRepeats) {
  const std::vector<float> logits = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f};
  uint64_t rng = 1;
  EXPECT_EQ(sample(logits.data(), 5, 0.0f, 0, 1.0f, rng), 1u);
  EXPECT_EQ(argmax(logits.data(), 5), 1u);
  EXPECT_EQ(rng, 1u) << "greedy decoding draws nothing";
  for (const uint32_t topK : {0u, 3u}) {
    uint64_t a = 99, b = 99;
    std::vector<uint32_t> first, second;
    for (int i = 0; i < 50; ++i) {
      first.push_back(sample(logits.data(), 5, 1.0f, topK, 0.9f, a));
      second.push_back(sample(logits.data(), 5, 1.0f, topK, 0.9f, b));
    }
    EXPECT_EQ(first, second);
    EXPECT_GT(std::set<uint32_t>(first.begin(), first.end()).size(), 1u);
  }
}

}  // namespace
}  // namespace lifl::kernels::llm
