#include "retrieval.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <numeric>
#include <sstream>
#include <string>

#include "lifl/common/worker_pool.h"
#include "lifl/gpu/llm_device.h"

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

SequenceRetrieval::SequenceRetrieval(const RetrievalConfig& config, uint32_t layers, uint32_t heads,
                                     uint32_t kvHeads, uint32_t headDim)
    : config_(config), heads_(heads), kvHeads_(kvHeads), headDim_(headDim), layers_(layers) {
  for (auto& l : layers_) {
    l.units.resize(kvHeads);
    l.chosen.resize(kvHeads);
    l.attend.resize(kvHeads);
  }
}

void SequenceRetrieval::addUnit(Units& to, const kl::KvPages& cache,
                                std::span<const uint32_t> table, uint32_t kvh,
                                std::span<const uint32_t> positions) const {
  std::vector<float> centroid(headDim_, 0.f);
  for (uint32_t t : positions) {
    const float* k =
        cache.kRow(table[t / kl::kPageTokens], t % kl::kPageTokens) + uint64_t{kvh} * headDim_;
    for (uint32_t d = 0; d < headDim_; ++d) centroid[d] += k[d];
  }
  for (auto& v : centroid) v /= static_cast<float>(positions.size());
  to.add(centroid, positions);
}

Result<void> SequenceRetrieval::clusterPrompt(const std::function<kl::KvPages(uint32_t)>& cache,
                                              std::span<const uint32_t> table,
                                              uint32_t promptLength, gpu::Backend backend) {
  promptLength_ = segmentStart_ = promptLength;
  // k-means is the prompt's main cost at long contexts (docs/benchmarks.md): on the CPU the
  // layers share the worker pool; the device takes them in turn.
  const auto layers = static_cast<uint32_t>(layers_.size());
  std::vector<Result<void>> outcomes(layers, success());
  auto cluster = [&](uint32_t l) { outcomes[l] = clusterLayer(l, cache(l), table, backend); };
  if (backend == gpu::Backend::Cuda)
    for (uint32_t l = 0; l < layers && (l == 0 || outcomes[l - 1]); ++l) cluster(l);
  else
    WorkerPool::shared().parallelFor(layers, cluster);
  for (auto& o : outcomes) LIFL_TRYV(std::move(o));
  return success();
}

Result<void> SequenceRetrieval::clusterLayer(uint32_t layer, const kl::KvPages& cache,
                                             std::span<const uint32_t> table,
                                             gpu::Backend backend) {
  const uint32_t promptLength = promptLength_;
  const uint32_t first = std::min(config_.sinks, promptLength);
  const uint32_t n = promptLength - first;
  if (n == 0) return success();
  const uint32_t clusters = (n + config_.clusterTokens - 1) / config_.clusterTokens;
  // The keys in one block: where the pages run in order (a GPU sequence's host copy) they
  // already are; otherwise they are gathered.
  const uint64_t rowFloats = cache.rowFloats();
  const uint32_t firstPage = first / kl::kPageTokens,
                 lastPage = (promptLength - 1) / kl::kPageTokens;
  bool inOrder = true;
  for (uint32_t p = firstPage; p <= lastPage && inOrder; ++p)
    inOrder = table[p] == table[firstPage] + (p - firstPage);
  std::vector<float> gathered;
  const float* keys = cache.kRow(table[firstPage], first % kl::kPageTokens);
  if (!inOrder) {
    gathered.resize(uint64_t{n} * rowFloats);
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t t = first + i;
      std::copy_n(cache.kRow(table[t / kl::kPageTokens], t % kl::kPageTokens), rowFloats,
                  gathered.data() + i * rowFloats);
    }
    keys = gathered.data();
  }
  std::vector<uint32_t> owner(uint64_t{kvHeads_} * n);
  std::vector<float> centroids(uint64_t{kvHeads_} * clusters * headDim_);
  LIFL_TRYV(gpu::llm::kmeans(backend, keys, n, kvHeads_, headDim_, clusters, kKmeansRounds,
                             owner.data(), centroids.data()));
  for (uint32_t kvh = 0; kvh < kvHeads_; ++kvh) {
    std::vector<std::vector<uint32_t>> members(clusters);
    for (uint32_t i = 0; i < n; ++i) members[owner[uint64_t{kvh} * n + i]].push_back(first + i);
    auto& units = layers_[layer].units[kvh];
    for (uint32_t c = 0; c < clusters; ++c)
      if (!members[c].empty()) {
        const float* centroid = centroids.data() + (uint64_t{kvh} * clusters + c) * headDim_;
        units.add({centroid, headDim_}, members[c]);
      }
  }
  return success();
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
    // The KV heads' selections are independent: one per worker (each streams its units'
    // centroids and positions, megabytes a layer at long contexts, so they also share the
    // memory bandwidth of several cores).
    WorkerPool::shared().parallelFor(kvHeads_, [&](uint32_t kvh) {
      auto& units = L.units[kvh];
      // Generated tokens that left the recent window since the last boundary: a segment.
      if (recentStart > segmentStart_ && segmentStart_ >= promptLength_) {
        std::vector<uint32_t> segment(recentStart - segmentStart_);
        std::iota(segment.begin(), segment.end(), segmentStart_);
        addUnit(units, cache, table, kvh, segment);
      }
      // Group-consistent: one selection per KV head, by its query heads' mean q . centroid,
      // which is the group's mean query . centroid (one dot product a unit).
      std::vector<float> mean(headDim_, 0.f);
      for (uint32_t g = 0; g < group; ++g) {
        const float* qh = q + uint64_t{kvh * group + g} * headDim_;
        for (uint32_t d = 0; d < headDim_; ++d) mean[d] += qh[d] / static_cast<float>(group);
      }
      std::vector<float> scores(units.size());
      kl::matmul(scores.data(), mean.data(), units.centroids.data(), 1, headDim_, units.size());
      // Units in descending score (ties to the lower index) until the budget is full, each
      // taken if it fits: a heap, since a 32K prompt has ~2 000 units and ~130 fill a budget
      // of 2 048 tokens.
      std::vector<uint32_t> order(units.size());
      std::iota(order.begin(), order.end(), 0u);
      auto lower = [&](uint32_t a, uint32_t b) {
        return scores[a] < scores[b] || (scores[a] == scores[b] && a > b);
      };
      std::make_heap(order.begin(), order.end(), lower);
      // The fixed rows until the next selection: the sinks and the chosen units' positions
      // before the window (those in it are the window's, and leave with it), ascending: marked
      // in a bitmap of [0, recentStart) and read back in order, cheaper than sorting them.
      std::vector<uint64_t> marked((recentStart + 63) / 64, 0);
      auto mark = [&](uint32_t t) { marked[t / 64] |= uint64_t{1} << (t % 64); };
      for (uint32_t t = 0; t < std::min(config_.sinks, recentStart); ++t) mark(t);
      uint32_t used = 0;
      for (auto end = order.end(); end != order.begin() && used < config_.budget; --end) {
        std::pop_heap(order.begin(), end, lower);
        const auto members = units.of(*(end - 1));
        if (used + members.size() > config_.budget) continue;
        used += static_cast<uint32_t>(members.size());
        for (uint32_t t : members)
          if (t >= config_.sinks && t < recentStart) mark(t);
      }
      auto& fixed = L.chosen[kvh];
      fixed.clear();
      for (uint32_t w = 0; w < marked.size(); ++w)
        for (uint64_t bits = marked[w]; bits; bits &= bits - 1)
          fixed.push_back(w * 64 + static_cast<uint32_t>(std::countr_zero(bits)));
    });
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
