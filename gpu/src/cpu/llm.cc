#include "lifl/gpu/llm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "lifl/common/clones.h"
#include "lifl/common/worker_pool.h"

namespace lifl::kernels::llm {
namespace {

// 8 independent partial sums, so that GCC vectorises the reduction without reassociating a
// single fp32 sum (which it may not do at -O3 without -ffast-math).
LIFL_CLONES float dot(const float* __restrict a, const float* __restrict b, uint64_t n) {
  float s[8] = {};
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  float total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; i < n; ++i) total += a[i] * b[i];
  return total;
}

LIFL_CLONES void axpy(float* __restrict y, const float* __restrict x, float a, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

float roundToBf16(float x) {
  if (std::isnan(x)) return x;
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  bits += 0x7FFFu + ((bits >> 16) & 1u);  // to nearest, ties to the even upper half
  bits &= 0xFFFF0000u;
  std::memcpy(&x, &bits, 4);
  return x;
}

void rmsNorm(float* out, const float* x, const float* w, uint64_t rows, uint64_t n, float eps) {
  for (uint64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    const float inv = 1.0f / std::sqrt(dot(xr, xr, n) / static_cast<float>(n) + eps);
    for (uint64_t i = 0; i < n; ++i) out[r * n + i] = xr[i] * inv * w[i];
  }
}

void addRmsNorm(float* out, float* residual, const float* x, const float* w, uint64_t rows,
                uint64_t n, float eps) {
  for (uint64_t i = 0; i < rows * n; ++i) residual[i] += x[i];
  rmsNorm(out, residual, w, rows, n, eps);
}

void rope(float* x, uint64_t rows, uint32_t heads, uint32_t headDim, const uint32_t* positions,
          double theta) {
  const uint32_t half = headDim / 2;
  std::vector<float> cosv(half), sinv(half);
  for (uint64_t r = 0; r < rows; ++r) {
    for (uint32_t i = 0; i < half; ++i) {
      // As Hugging Face computes it: inv_freq in fp32, then position * inv_freq in fp32.
      const float invFreq =
          static_cast<float>(1.0 / std::pow(theta, (2.0 * i) / static_cast<double>(headDim)));
      const float angle = static_cast<float>(positions[r]) * invFreq;
      cosv[i] = std::cos(angle);
      sinv[i] = std::sin(angle);
    }
    for (uint32_t h = 0; h < heads; ++h) {
      float* v = x + (r * heads + h) * headDim;
      for (uint32_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cosv[i] - b * sinv[i];
        v[i + half] = b * cosv[i] + a * sinv[i];
      }
    }
  }
}

void siluAndMul(float* out, const float* gate, const float* up, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

namespace {

/// Outputs of a linear layer per parallel piece, and activation rows per tile: a weight row
/// is read once for a tile of rows (it stays in L1 while they pass) instead of once per row,
/// which made a 512-token prompt stream every weight 512 times.
constexpr uint64_t kOutputsPerPiece = 64, kRowsPerTile = 32;

/// Runs piece(begin, end) over [0, count) in pieces of `per`, on the worker pool when the
/// work (`cost` multiply-adds) is worth the hand-off. Each output is computed by the same code
/// either way, so results do not depend on the split.
template <class F>
void inPieces(uint64_t count, uint64_t per, uint64_t cost, F&& piece) {
  const auto pieces = static_cast<uint32_t>((count + per - 1) / per);
  auto run = [&](uint32_t p) { piece(p * per, std::min(count, (p + 1) * per)); };
  if (cost < (1u << 18)) {
    for (uint32_t p = 0; p < pieces; ++p) run(p);
    return;
  }
  WorkerPool::shared().parallelFor(pieces, run);
}

}  // namespace

void matmul(float* y, const float* x, const float* w, uint64_t rows, uint64_t in, uint64_t out) {
  inPieces(out, kOutputsPerPiece, rows * in * out, [&](uint64_t o0, uint64_t o1) {
    for (uint64_t r0 = 0; r0 < rows; r0 += kRowsPerTile)
      for (uint64_t o = o0; o < o1; ++o)
        for (uint64_t r = r0; r < std::min(rows, r0 + kRowsPerTile); ++r)
          y[r * out + o] = dot(x + r * in, w + o * in, in);
  });
}

namespace {

/// One query head's attention over `count` cached positions, position i being positionAt(i):
/// max-subtracted fp32 softmax of the scaled scores, then the weighted sum of the V rows.
template <class PositionAt>
void attendHead(float* o, const float* qh, uint32_t kvh, const KvPages& cache,
                std::span<const uint32_t> blockTable, size_t count, PositionAt positionAt,
                std::vector<float>& scores) {
  const uint32_t hd = cache.headDim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  scores.resize(count);
  float maxScore = -INFINITY;
  for (size_t i = 0; i < count; ++i) {
    const uint32_t t = positionAt(i);
    const float* k = cache.kRow(blockTable[t / kPageTokens], t % kPageTokens) + uint64_t{kvh} * hd;
    scores[i] = dot(qh, k, hd) * scale;
    maxScore = std::max(maxScore, scores[i]);
  }
  float total = 0;
  for (auto& s : scores) total += (s = std::exp(s - maxScore));
  std::fill(o, o + hd, 0.0f);
  for (size_t i = 0; i < count; ++i) {
    const uint32_t t = positionAt(i);
    const float* v = cache.vRow(blockTable[t / kPageTokens], t % kPageTokens) + uint64_t{kvh} * hd;
    axpy(o, v, scores[i] / total, hd);
  }
}

}  // namespace

void attention(float* out, const float* q, uint64_t rows, const uint32_t* positions, uint32_t heads,
               const KvPages& cache, std::span<const uint32_t> blockTable) {
  const uint32_t hd = cache.headDim, group = heads / cache.kvHeads;
  const uint64_t pairs = rows * heads;  // (row, head), each on its own
  inPieces(pairs, 4, pairs * (uint64_t{positions[rows - 1]} + 1) * hd * 2,
           [&](uint64_t p0, uint64_t p1) {
             std::vector<float> scores;
             for (uint64_t p = p0; p < p1; ++p) {
               const uint64_t r = p / heads;
               const auto h = static_cast<uint32_t>(p % heads);
               attendHead(
                   out + p * hd, q + p * hd, h / group, cache, blockTable, positions[r] + 1,
                   [](size_t i) { return static_cast<uint32_t>(i); }, scores);
             }
           });
}

QuantMatrix quantize(const float* w, uint64_t out, uint64_t in, uint32_t bits) {
  QuantMatrix m;
  m.bits = bits;
  m.out = out;
  m.in = in;
  const int qmax = bits == 8 ? 127 : 7;
  const uint64_t groups = in / kQuantGroup;
  m.scales.resize(out * groups);
  m.q.assign(bits == 8 ? out * in : out * in / 2, 0);
  for (uint64_t o = 0; o < out; ++o)
    for (uint64_t g = 0; g < groups; ++g) {
      const float* row = w + o * in + g * kQuantGroup;
      float amax = 0;
      for (uint32_t i = 0; i < kQuantGroup; ++i) amax = std::max(amax, std::abs(row[i]));
      const float scale = amax > 0 ? amax / static_cast<float>(qmax) : 1.0f;
      m.scales[o * groups + g] = scale;
      for (uint32_t i = 0; i < kQuantGroup; ++i) {
        const long v = std::clamp(std::lround(row[i] / scale), -long{qmax}, long{qmax});
        const uint64_t at = o * in + g * kQuantGroup + i;
        if (bits == 8) {
          m.q[at] = static_cast<int8_t>(v);
        } else {
          auto& byte = reinterpret_cast<uint8_t&>(m.q[at / 2]);
          byte = static_cast<uint8_t>(at % 2 == 0 ? (byte & 0xF0) | (v & 0xF)
                                                  : (byte & 0x0F) | ((v & 0xF) << 4));
        }
      }
    }
  return m;
}

void matmulQuant(float* y, const float* x, const QuantMatrix& w, uint64_t rows) {
  const uint64_t groups = w.in / kQuantGroup;
  inPieces(w.out, kOutputsPerPiece, rows * w.in * w.out, [&](uint64_t o0, uint64_t o1) {
    std::vector<float> deq(w.in);
    for (uint64_t o = o0; o < o1; ++o) {
      // One output row dequantised once for every activation row.
      for (uint64_t g = 0; g < groups; ++g)
        for (uint32_t i = 0; i < kQuantGroup; ++i)
          deq[g * kQuantGroup + i] =
              w.scales[o * groups + g] * static_cast<float>(w.at(o, g * kQuantGroup + i));
      for (uint64_t r = 0; r < rows; ++r) y[r * w.out + o] = dot(x + r * w.in, deq.data(), w.in);
    }
  });
}

void attentionAt(float* out, const float* q, uint32_t heads, const KvPages& cache,
                 std::span<const uint32_t> blockTable,
                 std::span<const std::vector<uint32_t>> positions) {
  const uint32_t hd = cache.headDim, group = heads / cache.kvHeads;
  inPieces(heads, 1, uint64_t{heads} * positions[0].size() * hd * 2, [&](uint64_t h0, uint64_t h1) {
    std::vector<float> scores;
    for (auto h = static_cast<uint32_t>(h0); h < h1; ++h) {
      const auto& at = positions[h / group];
      attendHead(
          out + uint64_t{h} * hd, q + uint64_t{h} * hd, h / group, cache, blockTable, at.size(),
          [&](size_t i) { return at[i]; }, scores);
    }
  });
}

uint32_t argmax(const float* logits, uint32_t vocab) {
  return static_cast<uint32_t>(std::max_element(logits, logits + vocab) - logits);
}

double nextDraw(uint64_t& rng) { return static_cast<double>(splitmix64(rng) >> 11) * 0x1.0p-53; }

Pick nextPick(float temperature, uint32_t topK, float topP, uint64_t& rng) {
  return {.temperature = temperature,
          .topK = topK,
          .topP = topP,
          .draw = temperature > 0.0f ? nextDraw(rng) : 0.0};
}

namespace {

/// The candidates in play under top_k (keep) and top_p, in index order, into `order`; returns
/// the largest logit. The candidates' order: logit descending, ties to the lower index.
float candidatesInPlay(const float* logits, uint32_t vocab, float temperature, uint32_t keep,
                       float topP, std::vector<uint32_t>& order) {
  auto higher = [&](uint32_t a, uint32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  order.resize(vocab);
  std::iota(order.begin(), order.end(), 0u);
  if (keep < vocab) {  // the top_k, in order
    std::partial_sort(order.begin(), order.begin() + keep, order.end(), higher);
    order.resize(keep);
  }
  const float top = keep < vocab ? logits[order[0]] : *std::max_element(logits, logits + vocab);
  uint32_t cut = keep;
  if (hasNucleus(topP)) {
    auto weight = [&](uint32_t i) { return std::exp((logits[i] - double{top}) / temperature); };
    double total = 0;  // of the `keep` candidates
    for (uint32_t i : order) total += weight(i);
    const double target = topP * total;
    // The nucleus over a sorted prefix that grows 4x at a time (it only ever appends: the
    // elements still unsorted are no larger than the prefix's), the whole vocabulary only
    // where the distribution is that flat.
    uint32_t sorted = keep < vocab ? keep : 0, scanned = 0;
    double mass = 0;
    cut = 0;
    while (cut == 0) {
      const uint32_t want = std::min(keep, std::max(256u, sorted * 4));
      if (want > sorted) {
        std::partial_sort(order.begin() + sorted, order.begin() + want, order.end(), higher);
        sorted = want;
      }
      for (; scanned < sorted && cut == 0; ++scanned)
        if ((mass += weight(order[scanned])) >= target) cut = scanned + 1;
      if (cut == 0 && sorted == keep) cut = keep;  // rounding kept the mass short of it
    }
  }
  order.resize(cut);
  std::sort(order.begin(), order.end());
  return top;
}

}  // namespace

uint32_t pickToken(const float* logits, uint32_t vocab, const Pick& pick) {
  if (pick.temperature <= 0.0f) return argmax(logits, vocab);
  const uint32_t keep = pick.topK ? std::min(pick.topK, vocab) : vocab;
  // Every token in play is drawn in index order with no sort (sorting a vocabulary of
  // 128 256 took 21 ms a token, 10x a GPU decode step).
  const bool all = keep == vocab && !hasNucleus(pick.topP);
  thread_local std::vector<uint32_t> inPlay;
  const double top =
      all ? *std::max_element(logits, logits + vocab)
          : candidatesInPlay(logits, vocab, pick.temperature, keep, pick.topP, inPlay);
  auto weight = [&](uint32_t i) { return std::exp((logits[i] - top) / pick.temperature); };
  const size_t count = all ? vocab : inPlay.size();
  auto token = [&](size_t j) { return all ? static_cast<uint32_t>(j) : inPlay[j]; };
  thread_local std::vector<double> p;
  p.resize(count);
  double total = 0;
  for (size_t j = 0; j < count; ++j) total += (p[j] = weight(token(j)));
  const double u = pick.draw * total;
  double acc = 0;
  for (size_t j = 0; j < count; ++j)
    if ((acc += p[j]) > u) return token(j);
  size_t last = count - 1;  // u rounded up to the total: the last token in play
  while (last > 0 && p[last] == 0) --last;
  return token(last);
}

uint32_t sample(const float* logits, uint32_t vocab, float temperature, uint32_t topK, float topP,
                uint64_t& rng) {
  return pickToken(logits, vocab, nextPick(temperature, topK, topP, rng));
}

}  // namespace lifl::kernels::llm
