// The LLM inference stages as functions (docs/llm.md), chained by `lifl up --model DIR`:
//
//   gateway --event: the /v1/completions request--> llm.prefill
//     tokenises, runs the prompt, samples the first token, and hands the sequence's KV cache
//     to the decode stage in one store object (CPU path; a CUDA IPC handle on the GPU path)
//   --event: the hand-off--> llm.decode
//     takes each sequence into its own paged KV pool and generates for all of them together,
//     one token each per step (continuous batching: new sequences join between steps);
//     streams each token to the gateway (Stream) and answers with the completion (Reply).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <memory>

#include "engine.h"
#include "kv_handoff.h"
#include "lifl/common/log.h"
#include "lifl/functions/sdk.h"
#include "model.h"
#include "tokenizer.h"

namespace lifl::fn {
namespace {

using dataplane::ObjectRef;

uint64_t monotonicNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

/// What a request asks for, parsed and checked against the model (OpenAI's names).
struct Request {
  std::vector<uint32_t> prompt;
  uint32_t maxTokens = 16;
  double temperature = 1.0;
  double topP = 1.0;
  uint32_t topK = 0;
  uint64_t seed = 0;
  bool stream = false;
  std::string model;
  std::vector<std::string> stop;  ///< OpenAI's `stop`: the text ends before the first found

  nlohmann::json toJson() const {
    return {{"max_tokens", maxTokens},
            {"temperature", temperature},
            {"top_p", topP},
            {"top_k", topK},
            {"seed", seed},
            {"stream", stream},
            {"stop", stop},
            {"model", model}};
  }
};

Error requestError(std::string detail) { return badRequest("invalid_request", std::move(detail)); }

Result<Request> parseRequest(std::string_view body, const llm::LlamaConfig& config,
                             const llm::Tokenizer& tokenizer, const std::string& served,
                             uint64_t correlation) {
  auto doc = nlohmann::json::parse(body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return requestError("the body is not a JSON object");
  Request r;
  r.seed = correlation;  // a request without a seed samples differently each time
  try {
    r.model = doc.value("model", served);
    if (r.model != served)
      return notFound("model_not_found", "this server serves " + served + ", not " + r.model);
    auto prompt = doc.find("prompt");
    if (prompt == doc.end()) return requestError("prompt is required");
    if (prompt->is_string()) {
      LIFL_TRY(tokens, tokenizer.encode(prompt->get<std::string>()));
      r.prompt = std::move(tokens);
    } else if (prompt->is_array()) {
      for (const auto& t : *prompt) {
        if (!t.is_number_unsigned())
          return requestError("prompt token ids are non-negative integers");
        if (t.get<uint64_t>() >= config.vocabSize)
          return requestError("token id " + t.dump() + " is not below the vocabulary size " +
                              std::to_string(config.vocabSize));
        r.prompt.push_back(t.get<uint32_t>());
      }
    } else {
      return requestError("prompt is a string or a list of token ids");
    }
    if (r.prompt.empty()) return requestError("prompt is empty");
    auto number = [&](const char* key, double fallback, double lo, double hi) -> Result<double> {
      auto it = doc.find(key);
      if (it == doc.end() || it->is_null()) return fallback;
      if (!it->is_number() || it->get<double>() < lo || it->get<double>() > hi)
        return requestError(std::string(key) + " must be a number in [" + std::to_string(lo) +
                            ", " + std::to_string(hi) + "]");
      return it->get<double>();
    };
    LIFL_TRY(maxTokens, number("max_tokens", 16, 1, 1 << 20));
    LIFL_TRY(temperature, number("temperature", 1.0, 0, 100));
    LIFL_TRY(topP, number("top_p", 1.0, 1e-9, 1.0));
    LIFL_TRY(topK, number("top_k", 0, 0, 1 << 30));
    LIFL_TRY(seed, number("seed", static_cast<double>(r.seed), 0, 9e15));
    r.maxTokens = static_cast<uint32_t>(maxTokens);
    r.temperature = temperature;
    r.topP = topP;
    r.topK = static_cast<uint32_t>(topK);
    r.seed = static_cast<uint64_t>(seed);
    if (auto s = doc.find("stream"); s != doc.end() && !s->is_null()) {
      if (!s->is_boolean()) return requestError("stream must be true or false");
      r.stream = s->get<bool>();
    }
    if (auto s = doc.find("stop"); s != doc.end() && !s->is_null()) {
      const auto list = s->is_array() ? *s : nlohmann::json::array({*s});
      if (list.size() > 4) return requestError("stop takes at most 4 strings");
      for (const auto& item : list) {
        if (!item.is_string() || item.get<std::string>().empty())
          return requestError("stop is a non-empty string or a list of them");
        r.stop.push_back(item.get<std::string>());
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return requestError(e.what());
  }
  if (r.prompt.size() + r.maxTokens > config.maxPositions)
    return requestError("prompt (" + std::to_string(r.prompt.size()) + " tokens) + max_tokens (" +
                        std::to_string(r.maxTokens) + ") exceed the model's " +
                        std::to_string(config.maxPositions) + " positions");
  return r;
}

/// The model and its engine, loaded when the instance first needs them.
struct Loaded {
  llm::LlamaModel model;
  std::unique_ptr<llm::Engine> engine;
  std::unique_ptr<llm::Tokenizer> tokenizer;
  std::string name;
};

Result<std::unique_ptr<Loaded>> load(const nlohmann::json& params) {
  const std::string dir = params.value("model", "");
  if (dir.empty()) return internal("no_model", "the LLM stage was assigned without a model");
  LIFL_TRY(model, llm::LlamaModel::load(dir));
  if (const std::string q = params.value("quantize", ""); !q.empty())
    LIFL_TRYV(model.quantize(q == "int4" ? 4 : 8));
  auto l = std::make_unique<Loaded>();
  l->model = std::move(model);
  // The served context: a config's max_position_embeddings (Llama 3: 131 072) would size a
  // KV pool of every sequence at full length beyond any GPU; --model-max-context caps it.
  if (const uint32_t cap = params.value("max_context", 0u); cap > 0)
    l->model.config.maxPositions = std::min(l->model.config.maxPositions, cap);
  const auto& c = l->model.config;
  // KV pages: the decode stage holds every running sequence, so size it for several.
  const uint32_t pagesPerSequence =
      (c.maxPositions + kernels::llm::kPageTokens - 1) / kernels::llm::kPageTokens;
  const uint32_t sequences = params.value("max_sequences", 16u);
  l->engine = std::make_unique<llm::Engine>(
      l->model, pagesPerSequence * sequences, params.value("device", std::string("cpu")) == "cuda",
      params.value("gemm", std::string("cublas")) == "cublas",
      params.value("kv_cache", std::string("bf16")) == "f32" ? gpu::llm::KvDtype::F32
                                                             : gpu::llm::KvDtype::Bf16);
  if (const std::string spec = params.value("kv_retrieval", ""); !spec.empty()) {
    LIFL_TRY(retrieval, llm::RetrievalConfig::parse(spec));
    l->engine->setRetrieval(retrieval);
  }
  LIFL_TRY(tokenizer, llm::Tokenizer::forModel(dir, c.vocabSize));
  l->tokenizer = std::move(tokenizer);
  l->name = params.value("model_name", std::string("lifl"));
  LIFL_INFO("llm: loaded " << dir << " (" << c.layers << " layers, hidden " << c.hiddenSize
                           << ", vocab " << c.vocabSize << ") on " << l->engine->device());
  return l;
}

class Prefill final : public Function {
 public:
  Result<void> onEvent(Context& ctx, const Descriptor& d) override {
    if (d.kind != DescriptorKind::Event)
      return badRequest("unexpected_descriptor", "llm.prefill takes events");
    LIFL_TRY(input, ctx.store().resolve(d));
    auto handed = run(ctx, d, input);
    ctx.store().release(input.handle());
    if (!handed) LIFL_TRYV(replyFailure(ctx, d.correlation, d.job, handed.error()));
    return success();
  }

 private:
  Result<void> run(Context& ctx, const Descriptor& d, const ObjectRef& input) {
    if (!loaded_) {
      LIFL_TRY(l, load(ctx.params()));
      loaded_ = std::move(l);
    }
    auto& engine = *loaded_->engine;
    LIFL_TRY(event, dataplane::readEvent(input));
    LIFL_TRY(request, parseRequest(event.text(), engine.config(), *loaded_->tokenizer,
                                   loaded_->name, d.correlation));
    llm::Sequence seq;
    auto logits = engine.prefill(seq, request.prompt);
    if (!logits) {
      engine.release(seq);
      return logits.error();
    }
    uint64_t rng = request.seed;
    const uint32_t first = kernels::llm::sample(
        logits.value().data(), engine.config().vocabSize, static_cast<float>(request.temperature),
        request.topK, static_cast<float>(request.topP), rng);
    // The hand-off: the request, the first token and the cache, in one object for decode.
    const InstanceId next = ctx.params().value("next", kAgentInstance);
    nlohmann::json attributes = event.attributes;
    attributes["request"] = request.toJson();
    attributes["prompt_tokens"] = request.prompt.size();
    attributes["first_token"] = first;
    // Where the hand-off leaves this node, the decode node's clock times the first token.
    if (ctx.params().value("role", std::string("both")) != "prefill")
      attributes["first_token_ns"] = monotonicNs();
    attributes["rng"] = rng;
    LIFL_TRY(viaIpc, sendOnDevice(ctx, engine, seq));
    if (viaIpc) attributes["kv_ipc"] = *viaIpc;
    const uint64_t bytes = viaIpc ? 0 : engine.kvBytes(seq.length);
    auto made = dataplane::makeEvent(ctx.store(), next, attributes, bytes);
    if (!made) {
      if (viaIpc) ipc_->cancel(*viaIpc);
      engine.release(seq);
      return made.error();
    }
    if (!viaIpc) engine.exportKv(seq, made.value().second);
    engine.release(seq);
    Descriptor out{};
    out.dst = next;
    out.kind = DescriptorKind::Event;
    out.job = d.job;
    out.correlation = d.correlation;
    made.value().first.describe(out);
    return ctx.emit(out);
  }

  /// The K/V into a CUDA IPC slot (kv_handoff.h), on the GPU unless the chain says
  /// kv_handoff: host; none when there is no slot to take (the host carries it then).
  Result<std::optional<nlohmann::json>> sendOnDevice(Context& ctx, const llm::Engine& engine,
                                                     const llm::Sequence& seq) {
    if (!ipcTried_ && std::string(engine.device()) == "cuda" &&
        ctx.params().value("kv_handoff", std::string("ipc")) == "ipc") {
      ipcTried_ = true;
      constexpr uint32_t kSlots = 4;  // prompts in flight between the stages
      // Slots for prompts of up to 4096 tokens (longer ones go through the host), so that
      // long-context models do not pin gigabytes of device memory for the hand-off.
      constexpr uint32_t kSlotTokens = 4096;
      auto made = llm::KvHandoffSender::create(engine, kSlots,
                                               std::min(kSlotTokens, engine.config().maxPositions));
      if (made)
        ipc_ = std::move(made).value();
      else
        LIFL_WARN("llm: KV hand-off through the host: " << made.error().detail);
    }
    if (!ipc_) return std::optional<nlohmann::json>();
    return ipc_->send(engine, seq);
  }

  std::unique_ptr<Loaded> loaded_;
  std::unique_ptr<llm::KvHandoffSender> ipc_;
  bool ipcTried_ = false;
};

class Decode final : public Function {
 public:
  Result<void> onEvent(Context& ctx, const Descriptor& d) override {
    if (d.kind != DescriptorKind::Event)
      return badRequest("unexpected_descriptor", "llm.decode takes events");
    waiting_.push_back(d);  // admitted in arrival order as KV pages allow
    return admitWaiting(ctx);
  }

  // One step for every running sequence, then back to the queue for new ones.
  Result<void> onIdle(Context& ctx) override {
    if (running_.empty()) return success();
    std::vector<llm::Sequence*> seqs;
    std::vector<uint32_t> tokens;
    for (auto& [_, r] : running_) {
      seqs.push_back(&r.seq);
      tokens.push_back(r.tokens.back());
    }
    auto next = nextTokens(seqs, tokens);
    if (!next) {  // no pages left: these requests fail rather than wait forever
      for (auto& [corr, r] : running_) (void)replyFailure(ctx, corr, r.job, next.error());
      for (auto& [_, r] : running_) loaded_->engine->release(r.seq);
      running_.clear();
      return next.error();
    }
    size_t i = 0;
    for (auto& [correlation, r] : running_) {
      r.tokens.push_back(next.value()[i++]);
      if (r.request.stream) LIFL_TRYV(streamPiece(ctx, correlation, r, r.tokens.back()));
    }
    return finishDone(ctx);
  }

  bool hasWork() const override { return !running_.empty(); }

 private:
  /// One step's next token of each running request (in running_'s order), each picked with
  /// its request's settings and a draw from its generator (on the GPU, where the logits are:
  /// only the tokens come back).
  Result<std::vector<uint32_t>> nextTokens(std::span<llm::Sequence* const> seqs,
                                           std::span<const uint32_t> tokens) {
    std::vector<kernels::llm::Pick> picks;
    for (auto& [_, r] : running_)
      picks.push_back(kernels::llm::nextPick(static_cast<float>(r.request.temperature),
                                             r.request.topK, static_cast<float>(r.request.topP),
                                             r.rng));
    return loaded_->engine->decodeTokens(seqs, tokens, picks);
  }

  struct Running {
    Request request;
    llm::Sequence seq;
    std::vector<uint32_t> tokens;  ///< generated
    uint64_t rng = 0;
    uint32_t job = 0;
    uint64_t promptTokens = 0;
    uint64_t firstTokenNs = 0;
    int64_t created = 0;
  };

  /// Takes the waiting hand-offs whose whole length (prompt + max_tokens) fits in the free
  /// KV pages, oldest first; the others wait for running sequences to finish. A request
  /// longer than the whole pool is refused (503 kv_cache_full) rather than left waiting.
  Result<void> admitWaiting(Context& ctx) {
    if (!loaded_) {
      LIFL_TRY(l, load(ctx.params()));
      loaded_ = std::move(l);
    }
    auto& engine = *loaded_->engine;
    while (!waiting_.empty()) {
      const Descriptor d = waiting_.front();
      auto input = ctx.store().resolve(d);
      if (!input) {  // gone: nothing to answer with
        waiting_.pop_front();
        continue;
      }
      auto event = dataplane::readEvent(input.value());
      uint32_t pages = 0;
      if (event) {
        const auto& a = event.value().attributes;
        pages = llm::Engine::pagesFor(a.value("prompt_tokens", 0u) +
                                      a["request"].value("max_tokens", 0u));
        if (pages <= engine.totalPages() && pages > engine.freePages()) break;  // wait
      }
      waiting_.pop_front();
      Result<void> joined = success();
      if (!event)
        joined = event.error();
      else if (pages > engine.totalPages()) {
        joined = unavailable("kv_cache_full",
                             "the request needs more KV-cache pages than the decode stage has");
        if (auto ipc = event.value().attributes.find("kv_ipc");
            ipc != event.value().attributes.end())
          ipc_.discard(*ipc);
      } else
        joined = join(ctx, d, input.value());
      ctx.store().release(input.value().handle());
      if (!joined) LIFL_TRYV(replyFailure(ctx, d.correlation, d.job, joined.error()));
    }
    return success();
  }

  Result<void> join(Context& ctx, const Descriptor& d, const ObjectRef& input) {
    LIFL_TRY(event, dataplane::readEvent(input));
    const auto& a = event.attributes;
    Running r;
    const auto& q = a.at("request");
    r.request.maxTokens = q.at("max_tokens");
    r.request.temperature = q.at("temperature");
    r.request.topP = q.at("top_p");
    r.request.topK = q.at("top_k");
    r.request.stream = q.at("stream");
    r.request.model = q.at("model");
    r.request.stop = q.value("stop", std::vector<std::string>{});
    r.promptTokens = a.at("prompt_tokens");
    r.rng = a.at("rng");
    r.firstTokenNs = a.value("first_token_ns", monotonicNs());  // absent: from another node
    r.job = d.job;
    r.created = static_cast<int64_t>(std::time(nullptr));
    r.tokens.push_back(a.at("first_token"));
    const auto length = static_cast<uint32_t>(r.promptTokens);
    if (auto ipc = a.find("kv_ipc"); ipc != a.end()) {
      LIFL_TRYV(ipc_.receive(*loaded_->engine, r.seq, *ipc, length));
      if (!loggedIpc_) LIFL_INFO("llm: KV hand-off through CUDA IPC");
      loggedIpc_ = true;
    } else {
      if (event.size != loaded_->engine->kvBytes(length))
        return internal("bad_handoff", "the KV hand-off does not match the model");
      LIFL_TRYV(loaded_->engine->importKv(r.seq, event.data, length));
    }
    if (auto reserved = loaded_->engine->reserve(r.seq, r.request.maxTokens); !reserved) {
      loaded_->engine->release(r.seq);
      return reserved.error();
    }
    auto [it, _] = running_.emplace(d.correlation, std::move(r));
    if (it->second.request.stream)
      LIFL_TRYV(streamPiece(ctx, it->first, it->second, it->second.tokens[0]));
    return finishDone(ctx);
  }

  nlohmann::json completion(uint64_t correlation, const Running& r, const std::string& text,
                            const std::vector<uint32_t>& ids, const char* finish) const {
    nlohmann::json choice = {{"index", 0},
                             {"text", text},
                             {"token_ids", ids},
                             {"logprobs", nullptr},
                             {"finish_reason", finish ? nlohmann::json(finish) : nlohmann::json()}};
    return {{"id", "cmpl-" + std::to_string(correlation)},
            {"object", "text_completion"},
            {"created", r.created},
            {"model", r.request.model},
            {"choices", nlohmann::json::array({choice})}};
  }

  Result<void> send(Context& ctx, uint64_t correlation, uint32_t job, DescriptorKind kind,
                    const nlohmann::json& attributes, const std::string& data) {
    LIFL_TRY(made, dataplane::makeEvent(ctx.store(), kAgentInstance, attributes, data.size()));
    std::memcpy(made.second, data.data(), data.size());
    Descriptor out{};
    out.dst = kAgentInstance;
    out.kind = kind;
    out.job = job;
    out.correlation = correlation;
    made.first.describe(out);
    return ctx.emit(out);
  }

  Result<void> streamPiece(Context& ctx, uint64_t correlation, const Running& r, uint32_t token) {
    const std::string text = loaded_->tokenizer->decode({token});
    const auto body = completion(correlation, r, text, {token}, nullptr)
                          .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return send(ctx, correlation, r.job, DescriptorKind::Stream, {{"type", "llm.piece"}}, body);
  }

  // Answers every sequence that has its tokens, and gives its pages back.
  Result<void> finishDone(Context& ctx) {
    for (auto it = running_.begin(); it != running_.end();) {
      Running& r = it->second;
      // An end-of-sequence token stops the completion ("stop") and is not part of its text;
      // so does a stop string, the text ending before it.
      // The text is decoded each step only when stop strings are to be looked for.
      const bool eos = loaded_->model.config.isEos(r.tokens.back());
      const bool full = r.tokens.size() >= r.request.maxTokens;
      std::string text;
      size_t cut = std::string::npos;
      if (eos || full || !r.request.stop.empty()) {
        std::vector<uint32_t> textTokens(r.tokens.begin(), r.tokens.end() - (eos ? 1 : 0));
        text = loaded_->tokenizer->decode(textTokens);
        for (const auto& s : r.request.stop) cut = std::min(cut, text.find(s));
      }
      const bool stopped = eos || cut != std::string::npos;
      if (!stopped && !full) {
        ++it;
        continue;
      }
      if (cut != std::string::npos) text.resize(cut);
      nlohmann::json body = completion(it->first, r, text, r.tokens, stopped ? "stop" : "length");
      body["usage"] = {{"prompt_tokens", r.promptTokens},
                       {"completion_tokens", r.tokens.size()},
                       {"total_tokens", r.promptTokens + r.tokens.size()}};
      // For the gateway's metrics (steady clock: the same on every process of the node).
      nlohmann::json attributes = {{"type", "llm.completion"},
                                   {"first_token_ns", r.firstTokenNs},
                                   {"finished_ns", monotonicNs()}};
      auto sent = send(ctx, it->first, r.job, DescriptorKind::Reply, attributes,
                       body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      loaded_->engine->release(r.seq);
      it = running_.erase(it);
      LIFL_TRYV(sent);
    }
    return waiting_.empty() ? success() : admitWaiting(ctx);  // pages may have come free
  }

  std::unique_ptr<Loaded> loaded_;
  std::map<uint64_t, Running> running_;  ///< by correlation (request)
  std::deque<Descriptor> waiting_;       ///< hand-offs not yet admitted (their objects are ours)
  llm::KvHandoffReceiver ipc_;
  bool loggedIpc_ = false;
};

}  // namespace

void registerLlmFunctions(FunctionRegistry& registry) {
  registry.add("llm.prefill", [] { return std::make_unique<Prefill>(); });
  registry.add("llm.decode", [] { return std::make_unique<Decode>(); });
}

}  // namespace lifl::fn
