#include "retrieval.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>

#include "lifl/common/clones.h"

namespace lifl::llm {

namespace kl = kernels::llm;

Result<RetrievalConfig> RetrievalConfig::parse(std::string_view spec) {
  RetrievalConfig c;
  std::stringstream in{std::string(spec)};
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto eq = item.find('=');
    const std::string key = item.substr(0, eq),
                      value = eq == std::string::npos ? "" : item.substr(eq + 1);
    try {
      if (key == "budget")
        c.budget = static_cast<uint32_t>(std::stoul(value));
      else if (key == "tau")
        c.tau = std::stod(value);
      else if (key == "sinks")
        c.sinks = static_cast<uint32_t>(std::stoul(value));
      else if (key == "recent")
        c.recent = static_cast<uint32_t>(std::stoul(value));
      else
        return badRequest("bad_arguments", "--kv-retrieval takes budget=N,tau=T (sinks, recent)");
    } catch (const std::exception&) {
      return badRequest("bad_arguments", "--kv-retrieval: " + key + " needs a number");
    }
  }
  if (!c.budget) return badRequest("bad_arguments", "--kv-retrieval needs budget=N (tokens)");
  return c;
}

namespace {

constexpr uint32_t kKeysAtOnce = 4;  ///< their score rows stay in L1 while a centroid row streams

/// The centroids nearest to `count` (<= kKeysAtOnce) keys by squared distance, ||c||^2 - 2 k.c
/// (a key's own norm is the same for every c): centroids transposed, [dim][clusters], so that
/// the inner loop runs over clusters in vector registers, each centroid row read once for all
/// the keys. Ties go to the lowest index.
LIFL_CLONES void nearestCentroids(const float* const* keys, uint32_t count,
                                  const float* __restrict__ transposed,
                                  const float* __restrict__ norms, float* __restrict__ scores,
                                  uint32_t clusters, uint32_t dim, uint32_t* out) {
  for (uint32_t j = 0; j < count; ++j)
    for (uint32_t c = 0; c < clusters; ++c) scores[j * clusters + c] = norms[c];
  for (uint32_t d = 0; d < dim; ++d) {
    const float* row = transposed + uint64_t{d} * clusters;
    for (uint32_t j = 0; j < count; ++j) {
      const float kd = -2.f * keys[j][d];
      float* __restrict__ score = scores + j * clusters;
      for (uint32_t c = 0; c < clusters; ++c) score[c] += kd * row[c];
    }
  }
  for (uint32_t j = 0; j < count; ++j) {
    const float* score = scores + j * clusters;
    uint32_t best = 0;
    for (uint32_t c = 1; c < clusters; ++c)
      if (score[c] < score[best]) best = c;
    out[j] = best;
  }
}

}  // namespace

SequenceRetrieval::SequenceRetrieval(const RetrievalConfig& config, uint32_t layers, uint32_t heads,
                                     uint32_t kvHeads, uint32_t headDim)
    : config_(config), heads_(heads), kvHeads_(kvHeads), headDim_(headDim), layers_(layers) {
  for (auto& l : layers_) {
    l.units.resize(kvHeads);
    l.chosen.resize(kvHeads);
    l.attend.resize(kvHeads);
  }
}

SequenceRetrieval::Unit SequenceRetrieval::unitOf(const kl::KvPages& cache,
                                                  std::span<const uint32_t> table, uint32_t kvh,
                                                  std::vector<uint32_t> positions) const {
  Unit u{std::vector<float>(headDim_, 0.f), std::move(positions)};
  for (uint32_t t : u.positions) {
    const float* k =
        cache.kRow(table[t / kl::kPageTokens], t % kl::kPageTokens) + uint64_t{kvh} * headDim_;
    for (uint32_t d = 0; d < headDim_; ++d) u.centroid[d] += k[d];
  }
  for (auto& v : u.centroid) v /= static_cast<float>(u.positions.size());
  return u;
}

void SequenceRetrieval::clusterPrompt(const std::function<kl::KvPages(uint32_t)>& cache,
                                      std::span<const uint32_t> table, uint32_t promptLength) {
  promptLength_ = segmentStart_ = promptLength;
  // k-means is the prompt's main cost at long contexts (docs/benchmarks.md): a thread per
  // layer, as many at once as there are cores.
  const auto layers = static_cast<uint32_t>(layers_.size());
  const uint32_t width = std::max(1u, std::min(layers, std::thread::hardware_concurrency()));
  std::atomic<uint32_t> next{0};
  std::vector<std::thread> workers;
  for (uint32_t w = 0; w < width; ++w)
    workers.emplace_back([&] {
      for (uint32_t l = next++; l < layers; l = next++) clusterLayer(l, cache(l), table);
    });
  for (auto& t : workers) t.join();
}

void SequenceRetrieval::clusterLayer(uint32_t layer, const kl::KvPages& cache,
                                     std::span<const uint32_t> table) {
  const uint32_t promptLength = promptLength_;
  const uint32_t first = std::min(config_.sinks, promptLength);
  const uint32_t n = promptLength - first;
  if (n == 0) return;
  const uint32_t clusters = (n + config_.clusterTokens - 1) / config_.clusterTokens;
  auto key = [&](uint32_t kvh, uint32_t t) {
    return cache.kRow(table[t / kl::kPageTokens], t % kl::kPageTokens) + uint64_t{kvh} * headDim_;
  };
  for (uint32_t kvh = 0; kvh < kvHeads_; ++kvh) {
    // k-means on squared distance: evenly spaced keys to start, 4 rounds of Lloyd.
    std::vector<std::vector<float>> centroids(clusters);
    for (uint32_t c = 0; c < clusters; ++c) {
      const float* k = key(kvh, first + static_cast<uint32_t>(uint64_t{c} * n / clusters));
      centroids[c].assign(k, k + headDim_);
    }
    std::vector<uint32_t> owner(n, 0);
    std::vector<float> transposed(uint64_t{headDim_} * clusters), norms(clusters),
        scores(uint64_t{kKeysAtOnce} * clusters);
    for (int round = 0; round < 4; ++round) {
      for (uint32_t c = 0; c < clusters; ++c) {
        norms[c] = 0;
        for (uint32_t d = 0; d < headDim_; ++d) {
          transposed[uint64_t{d} * clusters + c] = centroids[c][d];
          norms[c] += centroids[c][d] * centroids[c][d];
        }
      }
      for (uint32_t i = 0; i < n; i += kKeysAtOnce) {
        const uint32_t count = std::min(kKeysAtOnce, n - i);
        const float* keys[kKeysAtOnce];
        for (uint32_t j = 0; j < count; ++j) keys[j] = key(kvh, first + i + j);
        nearestCentroids(keys, count, transposed.data(), norms.data(), scores.data(), clusters,
                         headDim_, owner.data() + i);
      }
      std::vector<std::vector<float>> sums(clusters, std::vector<float>(headDim_, 0.f));
      std::vector<uint32_t> counts(clusters, 0);
      for (uint32_t i = 0; i < n; ++i) {
        const float* k = key(kvh, first + i);
        for (uint32_t d = 0; d < headDim_; ++d) sums[owner[i]][d] += k[d];
        counts[owner[i]]++;
      }
      for (uint32_t c = 0; c < clusters; ++c)
        if (counts[c])
          for (uint32_t d = 0; d < headDim_; ++d) centroids[c][d] = sums[c][d] / counts[c];
    }
    std::vector<std::vector<uint32_t>> members(clusters);
    for (uint32_t i = 0; i < n; ++i) members[owner[i]].push_back(first + i);
    auto& units = layers_[layer].units[kvh];
    for (uint32_t c = 0; c < clusters; ++c)
      if (!members[c].empty()) units.push_back({centroids[c], std::move(members[c])});
  }
}

const std::vector<std::vector<uint32_t>>& SequenceRetrieval::select(
    uint32_t layer, const float* q, uint32_t pos, const kl::KvPages& cache,
    std::span<const uint32_t> table) {
  auto& L = layers_[layer];
  const uint64_t qFloats = uint64_t{heads_} * headDim_;
  // The trigger: the queries' mean cosine against the previous step's.
  bool retrieve = !L.selected;
  if (!retrieve) {
    double cosine = 0;
    for (uint32_t h = 0; h < heads_; ++h) {
      const float* a = q + uint64_t{h} * headDim_;
      const float* b = L.lastQ.data() + uint64_t{h} * headDim_;
      double ab = 0, aa = 0, bb = 0;
      for (uint32_t d = 0; d < headDim_; ++d) {
        ab += double{a[d]} * b[d];
        aa += double{a[d]} * a[d];
        bb += double{b[d]} * b[d];
      }
      cosine += ab / std::sqrt(std::max(aa * bb, 1e-30));
    }
    retrieve = cosine / heads_ < config_.tau;
  }
  L.lastQ.assign(q, q + qFloats);
  const uint32_t recentStart = pos + 1 > config_.recent ? pos + 1 - config_.recent : 0;
  if (retrieve) {
    retrievals_++;
    L.selected = true;
    const uint32_t group = heads_ / kvHeads_;
    for (uint32_t kvh = 0; kvh < kvHeads_; ++kvh) {
      auto& units = L.units[kvh];
      // Generated tokens that left the recent window since the last boundary: a segment.
      if (recentStart > segmentStart_ && segmentStart_ >= promptLength_) {
        std::vector<uint32_t> segment(recentStart - segmentStart_);
        std::iota(segment.begin(), segment.end(), segmentStart_);
        units.push_back(unitOf(cache, table, kvh, std::move(segment)));
      }
      // Group-consistent: one selection per KV head, by its query heads' mean q . centroid,
      // which is the group's mean query . centroid (one dot product a unit).
      std::vector<float> mean(headDim_, 0.f);
      for (uint32_t g = 0; g < group; ++g) {
        const float* qh = q + uint64_t{kvh * group + g} * headDim_;
        for (uint32_t d = 0; d < headDim_; ++d) mean[d] += qh[d] / static_cast<float>(group);
      }
      std::vector<std::pair<float, size_t>> scored(units.size());
      for (size_t u = 0; u < units.size(); ++u) {
        const float* c = units[u].centroid.data();
        float s = 0;
        for (uint32_t d = 0; d < headDim_; ++d) s += mean[d] * c[d];
        scored[u] = {s, u};
      }
      std::sort(scored.begin(), scored.end(),
                [](const auto& a, const auto& b) { return a.first > b.first; });
      // The fixed rows until the next selection: the sinks and the chosen units' positions
      // before the window (those in it are the window's, and leave with it).
      auto& fixed = L.chosen[kvh];
      fixed.clear();
      for (uint32_t t = 0; t < std::min(config_.sinks, recentStart); ++t) fixed.push_back(t);
      uint32_t used = 0;
      for (const auto& [score, u] : scored) {
        if (used + units[u].positions.size() > config_.budget) continue;
        used += static_cast<uint32_t>(units[u].positions.size());
        for (uint32_t t : units[u].positions)
          if (t >= config_.sinks && t < recentStart) fixed.push_back(t);
      }
      std::sort(fixed.begin(), fixed.end());
      fixed.erase(std::unique(fixed.begin(), fixed.end()), fixed.end());
    }
    if (recentStart > segmentStart_ && segmentStart_ >= promptLength_) segmentStart_ = recentStart;
  }
  L.reselected = retrieve;
  // This step's positions: the fixed rows, then the recent window (with pos itself).
  for (uint32_t kvh = 0; kvh < kvHeads_; ++kvh) {
    auto& at = L.attend[kvh];
    at = L.chosen[kvh];
    for (uint32_t t = recentStart; t <= pos; ++t) at.push_back(t);
  }
  return L.attend;
}

}  // namespace lifl::llm
