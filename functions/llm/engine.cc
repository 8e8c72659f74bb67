#include "engine.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <numeric>

#include "lifl/common/log.h"
#include "lifl/common/scope_exit.h"

namespace lifl::llm {

namespace kl = kernels::llm;

Engine::Engine(const LlamaModel& model, uint32_t maxPages, bool gpu, bool tensorCores,
               gpu::llm::KvDtype kv)
    : model_(model), kv_(kv) {
  const auto& c = model.config;
  if (gpu && gpu::pickBackend(true) == gpu::Backend::Cuda) {
    gpu::llm::Shape shape{c.hiddenSize, c.intermediateSize, c.layers,
                          c.heads,      c.kvHeads,          c.headDim,
                          c.vocabSize,  maxPages,           static_cast<float>(c.rmsNormEps),
                          c.ropeTheta,  tensorCores,        kv};
    auto lin = [](const Linear& l) -> gpu::llm::HostLinear {
      if (l.quant) return {nullptr, l.quant->bits, l.quant->q.data(), l.quant->scales.data()};
      return {l.weight.data(), 16, nullptr, nullptr};
    };
    std::vector<gpu::llm::HostLayer> layers;
    for (const auto& l : model.layers)
      layers.push_back({l.inputNorm.data(), l.postNorm.data(), lin(l.q), lin(l.k), lin(l.v),
                        lin(l.o), lin(l.gate), lin(l.up), lin(l.down)});
    auto d = gpu::llm::DeviceModel::create(shape, model.embed.data(), model.norm.data(),
                                           model.lmHead.data(), layers);
    if (d)
      device_ = std::move(d).value();
    else
      LIFL_WARN("llm: the model runs on the CPU: " << d.error().detail);
  } else if (gpu) {
    LIFL_WARN("llm: the model runs on the CPU (" << gpu::cudaInfo().why << ")");
  }
  if (!device_) {
    const uint64_t rowFloats = uint64_t{c.kvHeads} * c.headDim;
    k_.assign(c.layers, std::vector<float>(uint64_t{maxPages} * kl::kPageTokens * rowFloats));
    v_ = k_;
  }
  for (uint32_t p = maxPages; p-- > 0;) free_.push_back(p);
  totalPages_ = maxPages;
}

template <class Run>
auto Engine::onDevice(const std::vector<Row>& rows, const std::vector<size_t>& logitRows,
                      Run&& run) {
  std::vector<uint32_t> tokens, positions, seqOf, tableStart, tableLen, tables, logit;
  std::map<Sequence*, uint32_t> index;
  for (const auto& r : rows) {
    auto [it, fresh] = index.emplace(r.seq, static_cast<uint32_t>(index.size()));
    if (fresh) {
      tableStart.push_back(static_cast<uint32_t>(tables.size()));
      tableLen.push_back(static_cast<uint32_t>(r.seq->pages.size()));
      tables.insert(tables.end(), r.seq->pages.begin(), r.seq->pages.end());
    }
    tokens.push_back(r.token);
    positions.push_back(r.position);
    seqOf.push_back(it->second);
  }
  for (size_t j : logitRows) logit.push_back(static_cast<uint32_t>(j));
  std::vector<uint32_t> retrieving;
  for (size_t r = 0; r < rows.size(); ++r)
    if (rows[r].seq->hostKv) retrieving.push_back(static_cast<uint32_t>(r));
  if (retrieving.empty())
    return run({tokens, positions, seqOf, tableStart, tableLen, tables, logit});
  const auto step = retrievalStep(rows, std::move(retrieving));
  return run({tokens, positions, seqOf, tableStart, tableLen, tables, logit, &step});
}

Result<void> Engine::reserve(Sequence& seq, uint32_t tokens) {
  const uint32_t need = (seq.length + tokens + kl::kPageTokens - 1) / kl::kPageTokens;
  if (seq.length + tokens > model_.config.maxPositions)
    return unprocessable("context_too_long", "the sequence would be longer than the model's " +
                                                 std::to_string(model_.config.maxPositions) +
                                                 " positions");
  if (seq.hostKv) return success();  // its K/V go to host memory; its pages stay the same
  if (need > seq.pages.size() + free_.size())
    return unavailable("kv_cache_full", "no KV-cache pages left; retry later");
  while (seq.pages.size() < need) {
    seq.pages.push_back(free_.back());
    free_.pop_back();
  }
  return success();
}

void Engine::exportKv(const Sequence& seq, void* to) const {
  if (device_) {
    auto copied = device_->exportKv(seq.pages, seq.length, to, kv_);
    LIFL_CHECK(copied.has_value(), "copying the KV cache from the device failed");
    return;
  }
  auto* out = static_cast<std::byte*>(to);
  for (uint32_t l = 0; l < model_.config.layers; ++l) {
    const kl::KvPages cache{const_cast<float*>(k_[l].data()), const_cast<float*>(v_[l].data()),
                            model_.config.kvHeads, model_.config.headDim};
    for (int kind = 0; kind < 2; ++kind)
      for (uint32_t t = 0; t < seq.length; ++t) {
        const uint32_t page = seq.pages[t / kl::kPageTokens], slot = t % kl::kPageTokens;
        exportRow(out, kind ? cache.vRow(page, slot) : cache.kRow(page, slot));
        out += rowBytes();
      }
  }
}

Result<void> Engine::importKv(Sequence& seq, const void* from, uint32_t length) {
  LIFL_TRYV(reserve(seq, length));
  if (device_) {
    LIFL_CHECK(seq.length == 0, "a hand-off starts a sequence");
    LIFL_TRYV(device_->importKv(seq.pages, length, from, kv_));
    seq.length = length;
    return success();
  }
  const auto* in = static_cast<const std::byte*>(from);
  for (uint32_t l = 0; l < model_.config.layers; ++l) {
    const kl::KvPages cache{k_[l].data(), v_[l].data(), model_.config.kvHeads,
                            model_.config.headDim};
    for (int kind = 0; kind < 2; ++kind)
      for (uint32_t t = 0; t < length; ++t) {
        const uint32_t pos = seq.length + t;
        const uint32_t page = seq.pages[pos / kl::kPageTokens], slot = pos % kl::kPageTokens;
        importRow(kind ? cache.vRow(page, slot) : cache.kRow(page, slot), in);
        in += rowBytes();
      }
  }
  seq.length += length;
  return startRetrieval(seq);
}

void Engine::setRetrieval(const RetrievalConfig& config) { retrieval_ = config; }

Result<void> Engine::startRetrieval(Sequence& seq) {
  // On the GPU a sequence moves to retrieval at its first decode step (toWorkingSet).
  if (device_ || !retrieval_.enabled() || !retrieval_.worthwhile(seq.length)) return success();
  const auto& c = model_.config;
  seq.retrieval =
      std::make_shared<SequenceRetrieval>(retrieval_, c.layers, c.heads, c.kvHeads, c.headDim);
  return seq.retrieval->clusterPrompt(
      [&](uint32_t l) {
        return kl::KvPages{k_[l].data(), v_[l].data(), c.kvHeads, c.headDim};
      },
      seq.pages, seq.length, gpu::Backend::Cpu);
}

kl::KvPages Engine::hostView(const Sequence& seq, uint32_t layer) const {
  const auto& c = model_.config;
  const uint64_t block = uint64_t{seq.hostKv->capacity} * c.kvHeads * c.headDim;
  float* base = seq.hostKv->memory.data() + 2 * layer * block;
  return {base, base + block, c.kvHeads, c.headDim};
}

Result<void> Engine::toWorkingSet(Sequence& seq) {
  const auto& c = model_.config;
  auto host = std::make_shared<HostKv>();
  host->capacity = pagesFor(c.maxPositions) * kl::kPageTokens;
  for (uint32_t p = 0; p < host->capacity / kl::kPageTokens; ++p) host->identity.push_back(p);
  LIFL_TRY(memory, gpu::llm::PinnedMemory::allocate(uint64_t{c.layers} * 2 * host->capacity *
                                                    c.kvHeads * c.headDim * sizeof(float)));
  host->memory = std::move(memory);
  LIFL_TRYV(device_->exportKv(seq.pages, seq.length, host->memory.data(), gpu::llm::KvDtype::F32,
                              host->capacity));
  seq.hostKv = std::move(host);
  seq.retrieval =
      std::make_shared<SequenceRetrieval>(retrieval_, c.layers, c.heads, c.kvHeads, c.headDim);
  // The prompt's keys are clustered on the device: 36 s at 32K on 16 cores before.
  LIFL_TRYV(seq.retrieval->clusterPrompt([&](uint32_t l) { return hostView(seq, l); },
                                         seq.hostKv->identity, seq.length, gpu::Backend::Cuda));
  // The pages now hold the working set: at most the sinks, the budget and the window.
  const uint32_t keep = pagesFor(static_cast<uint32_t>(std::min<uint64_t>(
      uint64_t{retrieval_.sinks} + retrieval_.budget + retrieval_.recent, seq.hostKv->capacity)));
  while (seq.pages.size() > keep) {
    free_.push_back(seq.pages.back());
    seq.pages.pop_back();
  }
  while (seq.pages.size() < keep) {
    if (free_.empty()) return unavailable("kv_cache_full", "no KV-cache pages left; retry later");
    seq.pages.push_back(free_.back());
    free_.pop_back();
  }
  return success();
}

gpu::llm::RetrievalStep Engine::retrievalStep(const std::vector<Row>& batch,
                                              std::vector<uint32_t> rows) {
  gpu::llm::RetrievalStep step;
  step.rows = std::move(rows);
  step.onLayer = [this, &batch, rows = step.rows](uint32_t layer, const float* q, const float* k,
                                                  const float* v, gpu::llm::RetrievalLayer& out) {
    const auto& c = model_.config;
    const uint64_t qFloats = uint64_t{c.heads} * c.headDim, kv = uint64_t{c.kvHeads} * c.headDim;
    for (size_t j = 0; j < rows.size(); ++j) {
      const uint32_t r = rows[j];
      Sequence& seq = *batch[r].seq;
      const auto started = std::chrono::steady_clock::now();
      ScopeExit timed([&] {  // however the row's decision ends
        seq.retrieval->addHostSeconds(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
      });
      const uint32_t pos = batch[r].position;
      const auto view = hostView(seq, layer);
      storeRow(view.kRow(pos / kl::kPageTokens, pos % kl::kPageTokens), k + j * kv);
      storeRow(view.vRow(pos / kl::kPageTokens, pos % kl::kPageTokens), v + j * kv);
      seq.retrieval->select(layer, q + j * qFloats, pos, view, seq.hostKv->identity);
      const bool all = seq.retrieval->reselected(layer);
      const uint32_t window = seq.retrieval->recent(), from = pos + 1 - window;
      // Device addresses of a position's K and V rows in the layer's host blocks.
      const float* base = seq.hostKv->memory.device() + (view.k - seq.hostKv->memory.data());
      const uint64_t vOffset = view.v - view.k;
      auto copy = [&](uint32_t position, uint32_t dest, uint32_t h) {
        const float* kRow = base + uint64_t{position} * kv;
        out.copies.push_back(
            {kRow, kRow + vOffset, dest, static_cast<uint16_t>(r), static_cast<uint16_t>(h)});
      };
      for (uint32_t h = 0; h < c.kvHeads; ++h) {
        const auto& fixed = seq.retrieval->fixedRows(layer, h);
        const auto held = static_cast<uint32_t>(fixed.size());
        if (held + window > seq.pages.size() * kl::kPageTokens)
          return std::string("retrieval: the working set outgrew its pages");
        if (all) {
          for (uint32_t i = 0; i < held; ++i) copy(fixed[i], i, h);
          for (uint32_t p = from; p <= pos; ++p) copy(p, held + p % window, h);
        } else {
          copy(pos, held + pos % window, h);  // the window's ring: pos replaces pos - window
        }
        out.lengths[r * c.kvHeads + h] = held + window;
      }
    }
    return std::string();
  };
  return step;
}

void Engine::storeRow(float* to, const float* from) const {
  const uint64_t n = rowValues();
  if (kv_ == gpu::llm::KvDtype::F32) {
    std::memcpy(to, from, n * sizeof(float));
    return;
  }
  for (uint64_t i = 0; i < n; ++i) to[i] = kl::roundToBf16(from[i]);
}

void Engine::exportRow(std::byte* to, const float* from) const {
  const uint64_t n = rowValues();
  if (kv_ == gpu::llm::KvDtype::F32) {
    std::memcpy(to, from, n * sizeof(float));
    return;
  }
  for (uint64_t i = 0; i < n; ++i) {  // the pages hold values rounded to BF16: exact
    uint32_t bits;
    std::memcpy(&bits, from + i, sizeof bits);
    const auto upper = static_cast<uint16_t>(bits >> 16);
    std::memcpy(to + 2 * i, &upper, sizeof upper);
  }
}

void Engine::importRow(float* to, const std::byte* from) const {
  const uint64_t n = rowValues();
  if (kv_ == gpu::llm::KvDtype::F32) {  // an unaligned hand-off object: memcpy, not loads
    std::memcpy(to, from, n * sizeof(float));
    return;
  }
  for (uint64_t i = 0; i < n; ++i) {
    uint16_t upper;
    std::memcpy(&upper, from + 2 * i, sizeof upper);
    const uint32_t bits = uint32_t{upper} << 16;
    std::memcpy(to + i, &bits, sizeof bits);
  }
}

void Engine::release(Sequence& seq) {
  seq.retrieval.reset();
  seq.hostKv.reset();
  for (uint32_t p : seq.pages) free_.push_back(p);
  seq.pages.clear();
  seq.length = 0;
}

Result<std::vector<float>> Engine::prefill(Sequence& seq, std::span<const uint32_t> tokens) {
  if (tokens.empty()) return badRequest("empty_prompt", "a prompt needs at least one token");
  if (seq.hostKv) return badRequest("bad_sequence", "a retrieving sequence decodes only");
  LIFL_TRYV(reserve(seq, static_cast<uint32_t>(tokens.size())));
  std::vector<Row> rows;
  for (uint32_t t : tokens)
    rows.push_back({&seq, t, seq.length + static_cast<uint32_t>(rows.size())});
  LIFL_TRY(logits, forward(rows, {rows.size() - 1}));
  seq.length += static_cast<uint32_t>(tokens.size());
  if (!seq.retrieval) LIFL_TRYV(startRetrieval(seq));
  return logits;
}

Result<void> Engine::checkTokens(const std::vector<Row>& rows) const {
  for (const auto& r : rows)
    if (r.token >= model_.config.vocabSize)
      return badRequest("bad_token", "token id " + std::to_string(r.token) +
                                         " is not below the vocabulary size " +
                                         std::to_string(model_.config.vocabSize));
  return success();
}

template <class T, class Run>
Result<T> Engine::step(std::span<Sequence* const> seqs, std::span<const uint32_t> tokens,
                       Run&& run) {
  std::vector<Row> rows;
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (device_ && retrieval_.enabled() && !seqs[i]->retrieval &&
        retrieval_.worthwhile(seqs[i]->length))
      LIFL_TRYV(toWorkingSet(*seqs[i]));
    LIFL_TRYV(reserve(*seqs[i], 1));
    rows.push_back({seqs[i], tokens[i], seqs[i]->length});
  }
  std::vector<size_t> all(rows.size());
  std::iota(all.begin(), all.end(), size_t{0});
  LIFL_TRY(out, run(rows, all));
  for (auto* s : seqs) s->length++;
  return out;
}

Result<std::vector<float>> Engine::decode(std::span<Sequence* const> seqs,
                                          std::span<const uint32_t> tokens) {
  return step<std::vector<float>>(
      seqs, tokens, [&](const auto& rows, const auto& all) { return forward(rows, all); });
}

Result<std::vector<uint32_t>> Engine::decodeTokens(std::span<Sequence* const> seqs,
                                                   std::span<const uint32_t> tokens,
                                                   std::span<const kl::Pick> picks) {
  if (picks.size() != seqs.size()) return badRequest("bad_arguments", "a pick for each sequence");
  if (!device_) {  // the CPU's logits are in host memory already
    LIFL_TRY(logits, decode(seqs, tokens));
    const uint32_t vocab = model_.config.vocabSize;
    std::vector<uint32_t> next(seqs.size());
    for (size_t i = 0; i < next.size(); ++i)
      next[i] = kl::pickToken(logits.data() + i * vocab, vocab, picks[i]);
    return next;
  }
  return step<std::vector<uint32_t>>(
      seqs, tokens,
      [&](const std::vector<Row>& rows,
          const std::vector<size_t>& all) -> Result<std::vector<uint32_t>> {
        LIFL_TRYV(checkTokens(rows));
        return onDevice(rows, all,
                        [&](const gpu::llm::Batch& b) { return device_->forwardTokens(b, picks); });
      });
}

Result<std::vector<float>> Engine::forward(const std::vector<Row>& rows,
                                           const std::vector<size_t>& logitRows) {
  const auto& c = model_.config;
  const uint64_t n = rows.size(), h = c.hiddenSize, q = uint64_t{c.heads} * c.headDim,
                 kv = uint64_t{c.kvHeads} * c.headDim, inter = c.intermediateSize;
  const float eps = static_cast<float>(c.rmsNormEps);
  LIFL_TRYV(checkTokens(rows));
  if (device_)
    return onDevice(rows, logitRows, [&](const gpu::llm::Batch& b) { return device_->forward(b); });
  std::vector<float> x(n * h), normed(n * h), qs(n * q), ks(n * kv), vs(n * kv), attn(n * q),
      proj(n * h), gate(n * inter), up(n * inter);
  std::vector<uint32_t> positions(n);
  for (uint64_t i = 0; i < n; ++i) {
    std::memcpy(&x[i * h], &model_.embed[uint64_t{rows[i].token} * h], h * sizeof(float));
    positions[i] = rows[i].position;
  }
  // Rows of one sequence attend together (a prompt), each sequence over its own pages.
  std::map<Sequence*, std::vector<uint64_t>> bySeq;
  for (uint64_t i = 0; i < n; ++i) bySeq[rows[i].seq].push_back(i);
  std::vector<float> qRows, outRows;
  std::vector<uint32_t> seqPositions;
  for (uint32_t l = 0; l < c.layers; ++l) {
    const auto& w = model_.layers[l];
    kl::rmsNorm(normed.data(), x.data(), w.inputNorm.data(), n, h, eps);
    w.q.apply(qs.data(), normed.data(), n);
    w.k.apply(ks.data(), normed.data(), n);
    w.v.apply(vs.data(), normed.data(), n);
    kl::rope(qs.data(), n, c.heads, c.headDim, positions.data(), c.ropeTheta);
    kl::rope(ks.data(), n, c.kvHeads, c.headDim, positions.data(), c.ropeTheta);
    const kl::KvPages cache{k_[l].data(), v_[l].data(), c.kvHeads, c.headDim};
    for (uint64_t i = 0; i < n; ++i) {
      const uint32_t pos = rows[i].position;
      const uint32_t page = rows[i].seq->pages[pos / kl::kPageTokens];
      storeRow(cache.kRow(page, pos % kl::kPageTokens), &ks[i * kv]);
      storeRow(cache.vRow(page, pos % kl::kPageTokens), &vs[i * kv]);
    }
    for (const auto& [seq, idx] : bySeq) {
      qRows.resize(idx.size() * q);
      outRows.resize(idx.size() * q);
      seqPositions.resize(idx.size());
      for (size_t j = 0; j < idx.size(); ++j) {
        std::memcpy(&qRows[j * q], &qs[idx[j] * q], q * sizeof(float));
        seqPositions[j] = positions[idx[j]];
      }
      if (seq->retrieval && idx.size() == 1)  // a decode step: the retrieved positions only
        kl::attentionAt(
            outRows.data(), qRows.data(), c.heads, cache, seq->pages,
            seq->retrieval->select(l, qRows.data(), seqPositions[0], cache, seq->pages));
      else
        kl::attention(outRows.data(), qRows.data(), idx.size(), seqPositions.data(), c.heads, cache,
                      seq->pages);
      for (size_t j = 0; j < idx.size(); ++j)
        std::memcpy(&attn[idx[j] * q], &outRows[j * q], q * sizeof(float));
    }
    w.o.apply(proj.data(), attn.data(), n);
    kl::addRmsNorm(normed.data(), x.data(), proj.data(), w.postNorm.data(), n, h, eps);
    w.gate.apply(gate.data(), normed.data(), n);
    w.up.apply(up.data(), normed.data(), n);
    kl::siluAndMul(gate.data(), gate.data(), up.data(), n * inter);
    w.down.apply(proj.data(), gate.data(), n);
    for (uint64_t i = 0; i < n * h; ++i) x[i] += proj[i];
  }
  std::vector<float> last(logitRows.size() * h), logits(logitRows.size() * c.vocabSize);
  for (size_t j = 0; j < logitRows.size(); ++j)
    std::memcpy(&last[j * h], &x[logitRows[j] * h], h * sizeof(float));
  kl::rmsNorm(last.data(), last.data(), model_.norm.data(), logitRows.size(), h, eps);
  kl::matmul(logits.data(), last.data(), model_.lmHead.data(), logitRows.size(), h, c.vocabSize);
  return logits;
}

}  // namespace lifl::llm
