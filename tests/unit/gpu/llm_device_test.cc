// The LLM kernels on the GPU against their CPU reference (lifl/gpu/llm_device.h), where a
// CUDA device is present; elsewhere skipped with a message saying so. Fresh random inputs
// per test; outputs poisoned (NaN) before the call.
//
// Tolerance: both backends compute in fp32 in different orders (and the GPU's exp and sincos
// differ by ulps), so the norm-wise relative error ||gpu - cpu|| / ||cpu|| is asserted below
// 1e-5; the linear's weights are rounded to BF16 first, as the device holds them, so both
// see the same values. Attention runs with fp32 and with BF16 pages: with BF16 the CPU rounds
// its copies of K and V as the device rounds its pages, so the same 1e-5 holds; against fp32
// pages, BF16's answer must differ (it was rounded) by less than BF16's 2^-8 relative step.
#include "lifl/gpu/llm_device.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <random>
#include <vector>

namespace lifl::gpu::llm {
namespace {

using kernels::llm::Pick;

constexpr double kTolerance = 1e-5;

class LlmKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cudaInfo().usable)
      GTEST_SKIP() << "SKIPPED: no CUDA device here (" << cudaInfo().why
                   << "); run on the GPU machine";
  }
  std::vector<float> random(size_t n, float scale = 1.f) {
    std::uniform_real_distribution<float> d(-scale, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng_);
    return v;
  }
  static double relative(const std::vector<float>& got, const std::vector<float>& ref) {
    double err = 0, norm = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      if (!std::isfinite(got[i])) return INFINITY;
      err += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
      norm += double(ref[i]) * ref[i];
    }
    return std::sqrt(err / std::max(norm, 1e-300));
  }
  std::mt19937 rng_{std::random_device{}()};
};

TEST_F(LlmKernels, RmsNorm) {
  const uint64_t rows = 5, n = 2048;
  auto x = random(rows * n, 3.f), w = random(n);
  std::vector<float> cpu(rows * n), gpu(rows * n, std::nanf(""));
  ASSERT_TRUE(rmsNorm(Backend::Cpu, cpu.data(), x.data(), w.data(), rows, n, 1e-5f).has_value());
  ASSERT_TRUE(rmsNorm(Backend::Cuda, gpu.data(), x.data(), w.data(), rows, n, 1e-5f).has_value());
  EXPECT_LT(relative(gpu, cpu), kTolerance);
}

// Greedy decoding's token on the device: the first maximum of each row, as the CPU's
// std::max_element finds it, exactly. Rows of Llama 3's vocabulary and of a few odd sizes
// (fewer values than threads, one value). The maximum is planted twice in rows 0-2, where
// the first must win: seen by two threads of one warp, by threads of two warps, and by one
// thread twice (1 024 apart, the block's stride); then a row of -inf but one value, and a
// row of equal values.
TEST_F(LlmKernels, ArgmaxIsTheFirstMaximum) {
  for (uint32_t vocab : {128256u, 1000u, 33u, 1u}) {
    const uint64_t rows = 6;
    auto logits = random(rows * vocab, 5.f);
    float* r = logits.data();
    if (vocab > 2000) {
      r[vocab - 7] = r[vocab - 1] = 100.f;
      r[vocab + 40] = r[vocab + 72] = 100.f;
      r[2 * vocab + vocab / 2] = r[2 * vocab + vocab / 2 + 1024] = 100.f;
    }
    std::fill(r + 3 * vocab, r + 4 * vocab, -INFINITY);  // row 3: -inf but its last value
    r[4 * vocab - 1] = -3.f;
    std::fill(r + 4 * vocab, r + 5 * vocab, 2.f);  // row 4: all equal
    std::vector<uint32_t> cpu(rows), gpu(rows, UINT32_MAX);
    const std::vector<Pick> greedy(rows, Pick{.temperature = 0.f, .topK = 3, .draw = 0.5});
    ASSERT_TRUE(pickTokens(Backend::Cpu, cpu.data(), logits.data(), rows, vocab, greedy.data())
                    .has_value());
    ASSERT_TRUE(pickTokens(Backend::Cuda, gpu.data(), logits.data(), rows, vocab, greedy.data())
                    .has_value());
    EXPECT_EQ(gpu, cpu) << "vocab " << vocab;
    if (vocab > 2000) {
      EXPECT_EQ(cpu[0], vocab - 7);
      EXPECT_EQ(cpu[1], 40u);
      EXPECT_EQ(cpu[2], vocab / 2);
    }
    EXPECT_EQ(cpu[3], vocab - 1);
    EXPECT_EQ(cpu[4], 0u);
  }
}

// Sampled tokens on the device: each row's draw picks the token the CPU's
// kernels::llm::pickToken picks from the same Pick, with every token in play and cut by
// top_k, by top_p and by both. The sums run in another order (a block's chunks and bins
// against one pass in index or sorted order), so a draw or a nucleus within ~1e-16 of a
// boundary could tell them apart: none of these rows is, and all must agree. The rows:
// - smooth logits (few ties) at three temperatures, and greedy;
// - logits on a grid of 1/8 (hundreds of ties at every value, so that top_k and the
//   nucleus cut within a run of ties, where the lower indices come first);
// - nearly flat logits (a nucleus of most of the vocabulary);
// - one logit far above the rest (a nucleus of one token).
// Over 1 000 draws of one row of 40 logits, every token in play, the counts follow
// softmax(logits / T) within 5 standard deviations.
TEST_F(LlmKernels, PickedTokensMatchTheCpu) {
  std::mt19937_64 gen(11);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const Pick cuts[] = {{.topK = 0, .topP = 1.f},    {.topK = 50, .topP = 1.f},
                       {.topK = 1, .topP = 1.f},    {.topK = 0, .topP = 0.9f},
                       {.topK = 0, .topP = 0.3f},   {.topK = 200, .topP = 0.8f},
                       {.topK = 7, .topP = 0.999f}, {.topK = 5000, .topP = 0.5f}};
  for (uint32_t vocab : {128256u, 1000u, 40u}) {
    for (const char* shape : {"smooth", "ties", "flat", "peak"}) {
      const uint64_t rows = vocab > 100000 ? 96 : vocab > 500 ? 2000 : 32000;
      auto one = random(vocab, 3.f);
      for (float& v : one) {
        if (shape[0] == 't') v = std::round(v * 8.f) / 8.f;
        if (shape[0] == 'f') v *= 1e-3f;
      }
      if (shape[0] == 'p') one[vocab / 3] = 40.f;
      std::vector<float> logits(rows * vocab);
      std::vector<Pick> picks(rows);
      for (uint64_t r = 0; r < rows; ++r) {
        std::copy(one.begin(), one.end(), logits.begin() + r * vocab);
        picks[r] = cuts[r / 4 % std::size(cuts)];
        picks[r].temperature = r % 4 == 3 ? 0.f : 0.5f + 0.25f * static_cast<float>(r % 4);
        picks[r].draw = uniform(gen);
      }
      std::vector<uint32_t> cpu(rows), gpu(rows, UINT32_MAX);
      ASSERT_TRUE(pickTokens(Backend::Cpu, cpu.data(), logits.data(), rows, vocab, picks.data())
                      .has_value());
      ASSERT_TRUE(pickTokens(Backend::Cuda, gpu.data(), logits.data(), rows, vocab, picks.data())
                      .has_value());
      for (uint64_t r = 0; r < rows; ++r)
        ASSERT_EQ(gpu[r], cpu[r]) << "vocab " << vocab << ", " << shape << " logits, row " << r
                                  << ": top_k " << picks[r].topK << ", top_p " << picks[r].topP
                                  << ", temperature " << picks[r].temperature;
      if (vocab != 40 || shape[0] != 's') continue;
      // Temperature 1 with every token in play (r % 4 == 2, the first cut): 1 000 draws against
      // the softmax, token by token (3 draws of slack for the rare ones, where 5 standard
      // deviations are less than one draw).
      double top = *std::max_element(one.begin(), one.end()), total = 0;
      std::vector<double> p(vocab);
      for (uint32_t i = 0; i < vocab; ++i) total += p[i] = std::exp(double{one[i]} - top);
      std::vector<uint64_t> count(vocab, 0);
      uint64_t n = 0;
      for (uint64_t r = 2; r < rows; r += 4)
        if (r / 4 % std::size(cuts) == 0) ++count[gpu[r]], ++n;
      ASSERT_EQ(n, 1000u);
      for (uint32_t i = 0; i < vocab; ++i) {
        const double q = p[i] / total;
        EXPECT_NEAR(static_cast<double>(count[i]), q * n, 5 * std::sqrt(q * (1 - q) * n) + 3)
            << "token " << i << " of " << vocab;
      }
    }
  }
}

TEST_F(LlmKernels, Rope) {
  const uint64_t rows = 40;
  const uint32_t heads = 8, hd = 64;
  auto x = random(rows * heads * hd);
  std::vector<uint32_t> pos(rows);
  for (uint64_t r = 0; r < rows; ++r) pos[r] = static_cast<uint32_t>(r * 97 % 4000);
  auto cpu = x, gpu = x;
  ASSERT_TRUE(rope(Backend::Cpu, cpu.data(), rows, heads, hd, pos.data(), 500000.0).has_value());
  ASSERT_TRUE(rope(Backend::Cuda, gpu.data(), rows, heads, hd, pos.data(), 500000.0).has_value());
  EXPECT_LT(relative(gpu, cpu), kTolerance);
}

TEST_F(LlmKernels, SiluAndMul) {
  const uint64_t n = 100003;
  auto g = random(n, 6.f), u = random(n);
  std::vector<float> cpu(n), gpu(n, std::nanf(""));
  ASSERT_TRUE(siluAndMul(Backend::Cpu, cpu.data(), g.data(), u.data(), n).has_value());
  ASSERT_TRUE(siluAndMul(Backend::Cuda, gpu.data(), g.data(), u.data(), n).has_value());
  EXPECT_LT(relative(gpu, cpu), kTolerance);
}

TEST_F(LlmKernels, LinearWithBf16Weights) {
  for (uint64_t rows : {1u, 3u, 16u, 37u}) {  // 37: three passes of up to 16 rows
    const uint64_t in = 1024, out = 600;
    auto x = random(rows * in), w = random(out * in, 0.05f);
    for (auto& v : w)  // as the device holds them
      v = std::bit_cast<float>(std::bit_cast<uint32_t>(v) & 0xffff0000u);
    std::vector<float> cpu(rows * out), gpu(rows * out, std::nanf(""));
    ASSERT_TRUE(linear(Backend::Cpu, cpu.data(), x.data(), w.data(), rows, in, out).has_value());
    ASSERT_TRUE(linear(Backend::Cuda, gpu.data(), x.data(), w.data(), rows, in, out).has_value());
    EXPECT_LT(relative(gpu, cpu), kTolerance) << rows << " rows";
  }
}

// W8A16 / W4A16: the GPU rounds the activations to BF16 (round to nearest even) and sums in
// fp32. Given activations already in BF16 it must equal the CPU reference (kTolerance);
// given fp32 activations it may differ by their rounding only: 2^-9 relative per value,
// which over random signs stays below 4e-3 norm-wise (a wrong fragment order gives ~1).
// Shapes: out 300 pads the last 16-output tile; in 384 has fewer groups than warps, and
// 8192 (64 groups) takes two passes of 32 warps; 21 and 40 rows take the 32-row kernel, 40
// in two passes. Out 4 300 (269 tiles, the last padded) at 2 048 and 4 096 inputs and 1 or
// 5 rows takes the 8-warp form of two tiles an SM and more, which decode's gate+up and head
// run.
TEST_F(LlmKernels, QuantisedLinearInt8AndInt4) {
  auto toBf16 = [](std::vector<float> v) {
    for (auto& f : v) {
      const uint32_t u = std::bit_cast<uint32_t>(f);
      f = std::bit_cast<float>((u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u);
    }
    return v;
  };
  struct Shape {
    uint64_t in, out, rows;
  };
  std::vector<Shape> shapes;
  for (uint64_t in : {1024u, 384u, 8192u})
    for (uint64_t rows : {1u, 5u, 16u, 21u, 40u}) shapes.push_back({in, 300, rows});
  for (uint64_t in : {2048u, 4096u})
    for (uint64_t rows : {1u, 5u}) shapes.push_back({in, 4300, rows});
  for (uint32_t bits : {8u, 4u})
    for (const auto [in, out, rows] : shapes) {
      const auto x = random(rows * in), w = random(out * in, 0.05f);
      const auto q = kernels::llm::quantize(w.data(), out, in, bits);
      const auto xb = toBf16(x);
      std::vector<float> cpu(rows * out), gpu(rows * out, std::nanf(""));
      ASSERT_TRUE(linearQuant(Backend::Cpu, cpu.data(), xb.data(), q, rows).has_value());
      ASSERT_TRUE(linearQuant(Backend::Cuda, gpu.data(), xb.data(), q, rows).has_value());
      EXPECT_LT(relative(gpu, cpu), kTolerance)
          << "int" << bits << ", " << rows << " rows, " << in << " -> " << out;
      std::fill(gpu.begin(), gpu.end(), std::nanf(""));
      ASSERT_TRUE(linearQuant(Backend::Cpu, cpu.data(), x.data(), q, rows).has_value());
      ASSERT_TRUE(linearQuant(Backend::Cuda, gpu.data(), x.data(), q, rows).has_value());
      EXPECT_LT(relative(gpu, cpu), 4e-3) << "int" << bits << ", fp32 activations";
    }
}

// q, k and v as the decode step runs them: stacked into one matrix, one launch writing each
// part's outputs to its own array. Parts of 40, 24 and 8 outputs start on whole 16-output
// tiles, with zero rows between them; each part must equal its own CPU linear (activations
// already in BF16, so kTolerance), at 1 and 21 rows (the 8- and 32-row kernels).
TEST_F(LlmKernels, StackedQuantisedPartsEachEqualTheirOwnLinear) {
  const uint64_t in = 256;
  for (uint32_t bits : {8u, 4u})
    for (uint64_t rows : {1u, 21u}) {
      std::vector<kernels::llm::QuantMatrix> parts;
      for (uint64_t out : {40u, 24u, 8u}) {
        const auto w = random(out * in, 0.05f);
        parts.push_back(kernels::llm::quantize(w.data(), out, in, bits));
      }
      auto x = random(rows * in);
      for (auto& f : x) f = std::bit_cast<float>(std::bit_cast<uint32_t>(f) & 0xffff0000u);
      std::vector<std::vector<float>> cpu, gpu;
      std::vector<float*> cpuOut, gpuOut;
      for (const auto& p : parts) {
        cpu.emplace_back(rows * p.out);
        gpu.emplace_back(rows * p.out, std::nanf(""));
      }
      for (size_t p = 0; p < parts.size(); ++p) {
        cpuOut.push_back(cpu[p].data());
        gpuOut.push_back(gpu[p].data());
      }
      ASSERT_TRUE(linearQuantStacked(Backend::Cpu, cpuOut, x.data(), parts, rows).has_value());
      ASSERT_TRUE(linearQuantStacked(Backend::Cuda, gpuOut, x.data(), parts, rows).has_value());
      for (size_t p = 0; p < parts.size(); ++p)
        EXPECT_LT(relative(gpu[p], cpu[p]), kTolerance)
            << "int" << bits << ", " << rows << " rows, part " << p;
    }
}

// KV retrieval's attention: each KV head attends to its own list of positions (sinks, a
// few scattered units, the recent window; lists of different lengths), the K/V rows read from
// host memory (zero-copy on CUDA) through a scattered block table. The host pages are over
// 128 KiB each, so that each is its own mapping (registered with the device once).
TEST_F(LlmKernels, AttentionOverRetrievedRowsInHostMemory) {
  const uint32_t heads = 8, kvHeads = 2, hd = 64, context = 600;
  const uint32_t pages = (context + kernels::llm::kPageTokens - 1) / kernels::llm::kPageTokens;
  const uint64_t pageFloats = uint64_t{pages + 5} * kernels::llm::kPageTokens * kvHeads * hd;
  auto k = random(pageFloats), v = random(pageFloats), q = random(uint64_t{heads} * hd);
  std::vector<uint32_t> table(pages);
  for (uint32_t p = 0; p < pages; ++p) table[p] = (p * 11 + 3) % (pages + 5);
  std::vector<std::vector<uint32_t>> lists(kvHeads);
  for (uint32_t h = 0; h < kvHeads; ++h) {
    for (uint32_t t = 0; t < 4; ++t) lists[h].push_back(t);    // sinks
    for (uint32_t t = 40 + 97 * h; t < 500; t += 61 + 13 * h)  // "units"
      for (uint32_t u = t; u < t + 16; ++u) lists[h].push_back(u);
    for (uint32_t t = context - 32; t < context; ++t) lists[h].push_back(t);  // recent
  }
  ASSERT_NE(lists[0].size(), lists[1].size());
  const kernels::llm::KvPages cache{k.data(), v.data(), kvHeads, hd};
  std::vector<float> cpu(q.size()), gpu(q.size(), std::nanf("")), f32;
  for (KvDtype dtype : {KvDtype::F32, KvDtype::Bf16}) {
    SCOPED_TRACE(dtype == KvDtype::Bf16 ? "BF16 working set" : "fp32 working set");
    std::fill(gpu.begin(), gpu.end(), std::nanf(""));
    ASSERT_TRUE(attentionAt(Backend::Cpu, cpu.data(), q.data(), heads, cache, pageFloats, table,
                            lists, dtype)
                    .has_value());
    auto done = attentionAt(Backend::Cuda, gpu.data(), q.data(), heads, cache, pageFloats, table,
                            lists, dtype);
    ASSERT_TRUE(done.has_value()) << done.error().detail;
    EXPECT_LT(relative(gpu, cpu), kTolerance);
    if (dtype == KvDtype::F32) {
      f32 = gpu;
    } else {
      EXPECT_GT(relative(gpu, f32), kTolerance);
      EXPECT_LT(relative(gpu, f32), 1.0 / 256);
    }
  }
  // Against full attention over all positions the answer differs: the lists matter.
  std::vector<float> full(q.size());
  const uint32_t last = context - 1;
  ASSERT_TRUE(
      attention(Backend::Cpu, full.data(), q.data(), 1, &last, heads, cache, pageFloats, table)
          .has_value());
  EXPECT_GT(relative(gpu, full), 1e-3);
}

// Every shape family of the decode kernels: the half-warp kernel (head_dim a multiple of 64,
// groups of 1 to 8 query heads) and the warp kernel (head_dim 96), at contexts cut into
// splits of 256 positions and, from 16K, of 512.
TEST_F(LlmKernels, PagedCausalGqaAttention) {
  struct Shape {
    uint32_t heads, kvHeads, hd, context;
  };
  for (const Shape shape :
       {Shape{8, 2, 64, 300}, Shape{4, 4, 64, 300}, Shape{8, 4, 128, 300}, Shape{16, 2, 64, 300},
        Shape{4, 2, 256, 300}, Shape{8, 2, 96, 300}, Shape{8, 2, 64, 17000}}) {
    const auto [heads, kvHeads, hd, context] = shape;
    SCOPED_TRACE(testing::Message() << heads << " heads, " << kvHeads << " KV heads, head_dim "
                                    << hd << ", context " << context);
    const uint32_t pages = (context + kernels::llm::kPageTokens - 1) / kernels::llm::kPageTokens;
    const uint64_t pageFloats = uint64_t{pages + 3} * kernels::llm::kPageTokens * kvHeads * hd;
    auto k = random(pageFloats), v = random(pageFloats);
    std::vector<uint32_t> table(pages);
    for (uint32_t p = 0; p < pages; ++p) table[p] = (p * 7 + 2) % (pages + 3);  // scattered
    // A prompt's rows at consecutive positions (the tiled prefill kernel: the last 40, and a
    // prompt from position 0) and rows at scattered positions (the split decode kernel).
    std::vector<std::vector<uint32_t>> cases(3);
    for (uint32_t t = context - 40; t < context; ++t) cases[0].push_back(t);
    for (uint32_t t = 0; t < 37; ++t) cases[1].push_back(t);
    for (uint32_t t = 3; t < context; t += std::max(29u, context / 12)) cases[2].push_back(t);
    for (const auto& pos : cases) {
      const uint64_t rows = pos.size();
      auto q = random(rows * heads * hd);
      const kernels::llm::KvPages cache{k.data(), v.data(), kvHeads, hd};
      std::vector<float> cpu(rows * heads * hd), gpu(rows * heads * hd), f32;
      for (KvDtype dtype : {KvDtype::F32, KvDtype::Bf16}) {
        SCOPED_TRACE(dtype == KvDtype::Bf16 ? "BF16 pages" : "fp32 pages");
        std::fill(gpu.begin(), gpu.end(), std::nanf(""));
        ASSERT_TRUE(attention(Backend::Cpu, cpu.data(), q.data(), rows, pos.data(), heads, cache,
                              pageFloats, table, dtype)
                        .has_value());
        ASSERT_TRUE(attention(Backend::Cuda, gpu.data(), q.data(), rows, pos.data(), heads, cache,
                              pageFloats, table, dtype)
                        .has_value());
        EXPECT_LT(relative(gpu, cpu), kTolerance) << rows << " rows from position " << pos[0];
        if (dtype == KvDtype::F32) {
          f32 = gpu;
        } else {
          EXPECT_GT(relative(gpu, f32), kTolerance);
          EXPECT_LT(relative(gpu, f32), 1.0 / 256);
        }
      }
    }
  }
}

}  // namespace
}  // namespace lifl::gpu::llm
