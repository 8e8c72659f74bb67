// `lifl model`: write a random-weight Llama model (generate), and run one on the CPU path
// (run: greedy or sampled generation from token ids, optionally saving the logits).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine.h"
#include "lifl/cli/args.h"
#include "lifl/cli/commands.h"
#include "lifl/gpu/llm.h"
#include "model.h"
#include "tokenizer.h"

namespace lifl::cli {
namespace {

const char* kUsage =
    "usage: lifl model generate --dir DIR [--hidden 64] [--intermediate 176] [--layers 2]\n"
    "                           [--heads 4] [--kv-heads 2] [--head-dim H/heads] [--vocab 320]\n"
    "                           [--max-positions 2048] [--rope-theta 10000] [--eps 1e-6]\n"
    "                           [--tied] [--eos ID] [--dtype f32|f16|bf16] [--seed 1]\n"
    "                           [--files 1]\n"
    "       lifl model tokenize --model DIR --text TEXT\n"
    "       lifl model run --model DIR (--tokens 1,2,3 | --tokens-file F | --prompt TEXT)\n"
    "                      [--max-tokens 16]\n"
    "                      [--temperature 0]\n"
    "                      [--top-k 0] [--top-p 1] [--seed 1] [--logits FILE]\n"
    "                      [--quantize int8|int4] [--device cpu|cuda]\n"
    "                      [--batch B --timing [--pick-on-host]] [--gemm cublas|exact]\n"
    "                      [--kv-cache bf16|f32]\n"
    "                      [--kv-retrieval budget=N,tau=T]\n"
    "\n"
    "generate writes config.json and *.safetensors of a random Llama (Hugging Face layout).\n"
    "run prints {\"tokens\": [...]} generated after the prompt; --logits saves the logits\n"
    "each token was chosen from (the prompt's, then each decode step's), a row of the\n"
    "vocabulary's size per generated token, as float32 (little-endian). --batch/--timing\n"
    "decode B copies of the prompt together and print the rates, each copy drawing with\n"
    "--temperature, --top-k and --top-p from a generator seeded --seed + its index;\n"
    "--pick-on-host brings each step's logits to the host and picks the tokens there (the\n"
    "same tokens; what picking on the device saves).";

Result<std::vector<uint32_t>> parseTokens(const std::string& text) {
  std::vector<uint32_t> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      out.push_back(static_cast<uint32_t>(std::stoul(item)));
    } catch (const std::exception&) {
      return badRequest("bad_arguments", "--tokens is a comma-separated list of token ids");
    }
  }
  if (out.empty()) return badRequest("bad_arguments", "--tokens needs at least one token id");
  return out;
}

int generate(const Args& a) {
  llm::GeneratorOptions o;
  auto& c = o.config;
  auto u = [&](const char* key, uint64_t fallback) { return a.getUnsigned(key, fallback); };
  auto hidden = u("hidden", 64), inter = u("intermediate", 176), layers = u("layers", 2),
       heads = u("heads", 4), kv = u("kv-heads", 2), vocab = u("vocab", 320),
       positions = u("max-positions", 2048), seed = u("seed", 1), files = u("files", 1);
  for (auto* r : {&hidden, &inter, &layers, &heads, &kv, &vocab, &positions, &seed, &files})
    if (!*r) return fail(r->error());
  c.hiddenSize = static_cast<uint32_t>(hidden.value());
  c.intermediateSize = static_cast<uint32_t>(inter.value());
  c.layers = static_cast<uint32_t>(layers.value());
  c.heads = static_cast<uint32_t>(heads.value());
  c.kvHeads = static_cast<uint32_t>(kv.value());
  c.vocabSize = static_cast<uint32_t>(vocab.value());
  c.maxPositions = static_cast<uint32_t>(positions.value());
  auto headDim = a.getUnsigned("head-dim", c.heads ? c.hiddenSize / c.heads : 0);
  auto theta = a.getDouble("rope-theta", 10000.0), eps = a.getDouble("eps", 1e-6);
  if (!headDim) return fail(headDim.error());
  if (!theta) return fail(theta.error());
  if (!eps) return fail(eps.error());
  c.headDim = static_cast<uint32_t>(headDim.value());
  c.ropeTheta = theta.value();
  c.rmsNormEps = eps.value();
  c.tieWordEmbeddings = a.has("tied");
  if (a.has("eos")) {
    auto eos = a.getUnsigned("eos", 0);
    if (!eos) return fail(eos.error());
    c.eosTokens = {static_cast<uint32_t>(eos.value())};
  }
  const std::string dtype = a.get("dtype", "f32");
  o.dtype = dtype == "bf16" ? DType::BF16 : dtype == "f16" ? DType::F16 : DType::F32;
  if (dtype != "f32" && dtype != "f16" && dtype != "bf16")
    return fail(badRequest("bad_arguments", "--dtype is f32, f16 or bf16"));
  o.seed = seed.value();
  o.files = static_cast<uint32_t>(files.value());
  // Checked as a loader would check it.
  if (auto checked = llm::LlamaConfig::fromJson(c.toJson(o.dtype)); !checked)
    return fail(checked.error());
  const std::string dir = a.get("dir");
  if (dir.empty()) return fail(badRequest("bad_arguments", "--dir is required"));
  if (auto r = llm::generateModel(dir, o); !r) return fail(r.error());
  std::printf("wrote a random Llama (%u layers, hidden %u, %u/%u heads, vocab %u, %s) to %s\n",
              c.layers, c.hiddenSize, c.heads, c.kvHeads, c.vocabSize, dtype.c_str(), dir.c_str());
  return 0;
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// How a run picks its tokens (--temperature, --top-k, --top-p, --seed).
struct Picking {
  float temperature = 0;
  uint32_t topK = 0;
  float topP = 1;
  uint64_t seed = 1;
  bool onHost = false;  ///< --timing: logits to the host, tokens picked there
};

/// --batch / --timing: `batch` copies of the prompt prefilled, then decoded together for
/// maxTokens steps, each sequence drawing from a generator of its own (greedy by default);
/// prints the times (the decode benchmark's measurement).
int timed(llm::Engine& engine, const std::vector<uint32_t>& prompt, uint32_t batch,
          uint32_t maxTokens, const Picking& how) {
  const uint32_t vocab = engine.config().vocabSize;
  {  // a warm-up pass, untimed: one-time costs (a cuBLAS handle, lazy allocations) stay out
    llm::Sequence warm;
    auto logits = engine.prefill(warm, prompt);
    engine.release(warm);
    if (!logits) return fail(logits.error());
  }
  std::vector<llm::Sequence> seqs(batch);
  std::vector<uint32_t> next(batch);
  std::vector<uint64_t> rng(batch);
  for (uint32_t b = 0; b < batch; ++b) rng[b] = how.seed + b;
  std::vector<kernels::llm::Pick> picks(batch);
  auto pick = [&](const float* logits, uint32_t b) {
    return kernels::llm::sample(logits, vocab, how.temperature, how.topK, how.topP, rng[b]);
  };
  const double t0 = now();
  for (uint32_t b = 0; b < batch; ++b) {
    auto logits = engine.prefill(seqs[b], prompt);
    if (!logits) return fail(logits.error());
    next[b] = pick(logits.value().data(), b);
  }
  const double t1 = now();
  std::vector<llm::Sequence*> ptrs;
  for (auto& s : seqs) ptrs.push_back(&s);
  double firstStep = 0;  // one-time work (a graph captured, KV moved for retrieval) apart
  for (uint32_t step = 1; step < maxTokens; ++step) {
    if (step == 2) firstStep = now() - t1;
    if (!how.onHost) {
      for (uint32_t b = 0; b < batch; ++b)
        picks[b] = kernels::llm::nextPick(how.temperature, how.topK, how.topP, rng[b]);
      auto picked = engine.decodeTokens(ptrs, next, picks);
      if (!picked) return fail(picked.error());
      next = std::move(picked.value());
      continue;
    }
    auto logits = engine.decode(ptrs, next);
    if (!logits) return fail(logits.error());
    for (uint32_t b = 0; b < batch; ++b)
      next[b] = pick(logits.value().data() + size_t{b} * vocab, b);
  }
  const double t2 = now();
  // The rate over the steps after the first (all of them when there is only one).
  const double steps = maxTokens > 2 ? maxTokens - 2 : 1;
  const double decode = maxTokens > 2 ? t2 - t1 - firstStep : t2 - t1;
  nlohmann::json result = {
      {"device", engine.device()},       {"batch", batch},
      {"prompt_tokens", prompt.size()},  {"prefill_seconds", t1 - t0},
      {"first_step_seconds", firstStep}, {"decode_steps", steps},
      {"decode_seconds", decode},        {"decode_tokens_per_second", batch * steps / decode}};
  if (seqs[0].retrieval) {
    result["retrievals"] = seqs[0].retrieval->retrievals();
    result["retrieval_host_seconds"] = seqs[0].retrieval->hostSeconds();  // all steps
  }
  std::printf("%s\n", result.dump().c_str());
  return 0;
}

/// `lifl model tokenize --model DIR --text T`: the ids of T by the folder's tokenizer, and
/// the text they decode to.
int tokenize(const Args& a) {
  const std::string dir = a.get("model");
  if (dir.empty()) return fail(badRequest("bad_arguments", "--model is required"));
  auto config = llm::LlamaModel::loadConfig(dir);
  if (!config) return fail(config.error());
  auto tokenizer = llm::Tokenizer::forModel(dir, config.value().vocabSize);
  if (!tokenizer) return fail(tokenizer.error());
  auto ids = tokenizer.value()->encode(a.get("text"));
  if (!ids) return fail(ids.error());
  std::printf("%s\n", nlohmann::json{{"tokens", ids.value()},
                                     {"text", tokenizer.value()->decode(ids.value())}}
                          .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                          .c_str());
  return 0;
}

int run(const Args& a) {
  const std::string dir = a.get("model");
  if (dir.empty()) return fail(badRequest("bad_arguments", "--model is required"));
  auto model = llm::LlamaModel::load(dir);
  if (!model) return fail(model.error());
  if (a.has("quantize")) {
    const std::string q = a.get("quantize");
    if (q != "int8" && q != "int4")
      return fail(badRequest("bad_arguments", "--quantize is int8 or int4"));
    if (auto r = model.value().quantize(q == "int8" ? 8 : 4); !r) return fail(r.error());
  }
  Result<std::vector<uint32_t>> prompt = std::vector<uint32_t>{};
  if (a.has("prompt")) {  // text, by the folder's tokenizer
    auto tokenizer = llm::Tokenizer::forModel(dir, model.value().config.vocabSize);
    if (!tokenizer) return fail(tokenizer.error());
    prompt = tokenizer.value()->encode(a.get("prompt"));
  } else if (a.has("tokens-file")) {  // long prompts: past the limit of one argument
    std::ifstream in(a.get("tokens-file"));
    if (!in) return fail(badRequest("bad_arguments", "cannot read " + a.get("tokens-file")));
    prompt = parseTokens(std::string(std::istreambuf_iterator<char>(in), {}));
  } else {
    prompt = parseTokens(a.get("tokens"));
  }
  if (!prompt) return fail(prompt.error());
  auto maxTokens = a.getUnsigned("max-tokens", 16), topK = a.getUnsigned("top-k", 0),
       seed = a.getUnsigned("seed", 1);
  auto temperature = a.getDouble("temperature", 0.0), topP = a.getDouble("top-p", 1.0);
  for (auto* r : {&maxTokens, &topK, &seed})
    if (!*r) return fail(r->error());
  if (!temperature) return fail(temperature.error());
  if (!topP) return fail(topP.error());
  const auto& c = model.value().config;
  auto device = a.getChoice("device", "cpu", "cuda");
  if (!device) return fail(device.error());
  auto batch = a.getUnsigned("batch", 1);
  if (!batch || batch.value() == 0) return fail(badRequest("bad_arguments", "--batch >= 1"));
  const uint32_t pagesPerSequence =
      (c.maxPositions + kernels::llm::kPageTokens - 1) / kernels::llm::kPageTokens;
  auto gemm = a.getChoice("gemm", "cublas", "exact");
  if (!gemm) return fail(gemm.error());
  auto kvCache = a.getChoice("kv-cache", "bf16", "f32");
  if (!kvCache) return fail(kvCache.error());
  llm::Engine engine(model.value(), pagesPerSequence * static_cast<uint32_t>(batch.value()),
                     device.value() == "cuda", gemm.value() == "cublas",
                     kvCache.value() == "f32" ? gpu::llm::KvDtype::F32 : gpu::llm::KvDtype::Bf16);
  if (a.has("kv-retrieval")) {
    auto retrieval = llm::RetrievalConfig::parse(a.get("kv-retrieval"));
    if (!retrieval) return fail(retrieval.error());
    engine.setRetrieval(retrieval.value());
  }
  const Picking how{static_cast<float>(temperature.value()), static_cast<uint32_t>(topK.value()),
                    static_cast<float>(topP.value()), seed.value(), a.has("pick-on-host")};
  if (batch.value() > 1 || a.has("timing"))
    return timed(engine, prompt.value(), static_cast<uint32_t>(batch.value()),
                 static_cast<uint32_t>(maxTokens.value()), how);
  std::ofstream logitsFile;
  if (a.has("logits")) {
    logitsFile.open(a.get("logits"), std::ios::binary);
    if (!logitsFile) return fail(badRequest("bad_arguments", "cannot write " + a.get("logits")));
  }
  llm::Sequence seq;
  auto logits = engine.prefill(seq, prompt.value());
  if (!logits) return fail(logits.error());
  uint64_t rng = seed.value();
  const float t = how.temperature;
  auto pick = [&](const std::vector<float>& from) -> Result<uint32_t> {
    if (logitsFile.is_open()) {
      logitsFile.write(reinterpret_cast<const char*>(from.data()),
                       static_cast<std::streamsize>(c.vocabSize * sizeof(float)));
      if (!logitsFile) return badRequest("bad_arguments", "cannot write " + a.get("logits"));
    }
    return kernels::llm::sample(from.data(), c.vocabSize, t, how.topK, how.topP, rng);
  };
  // Decode steps pick their token as the decode stage does, where the logits are (on the GPU,
  // there), unless the logits are saved.
  const bool inPlace = !logitsFile.is_open();
  auto first = pick(logits.value());
  if (!first) return fail(first.error());
  uint32_t next = first.value();
  std::vector<uint32_t> generated;
  llm::Sequence* one[] = {&seq};
  for (uint64_t i = 0; i < maxTokens.value(); ++i) {
    generated.push_back(next);
    if (i + 1 == maxTokens.value() || c.isEos(next)) break;
    const std::span<const uint32_t> token(&next, 1);
    if (inPlace) {
      const kernels::llm::Pick step = kernels::llm::nextPick(t, how.topK, how.topP, rng);
      auto picked = engine.decodeTokens(one, token, std::span(&step, 1));
      if (!picked) return fail(picked.error());
      next = picked.value()[0];
      continue;
    }
    logits = engine.decode(one, token);
    if (!logits) return fail(logits.error());
    auto chosen = pick(logits.value());
    if (!chosen) return fail(chosen.error());
    next = chosen.value();
  }
  nlohmann::json result = {{"tokens", generated}};
  if (seq.retrieval) result["retrievals"] = seq.retrieval->retrievals();
  std::printf("%s\n", result.dump().c_str());
  return 0;
}

}  // namespace

int cmdModel(int argc, char** argv) {
  auto args = Args::parse(argc, argv, 3, {"tied", "timing", "pick-on-host", "help", "h"});
  if (!args) return fail(args.error());
  const std::string verb = argc > 2 ? argv[2] : "";
  if (args.value().wantsHelp() || (verb != "generate" && verb != "run" && verb != "tokenize")) {
    std::puts(kUsage);
    return args.value().wantsHelp() ? 0 : 1;
  }
  if (verb == "tokenize") return tokenize(args.value());
  return verb == "generate" ? generate(args.value()) : run(args.value());
}

}  // namespace lifl::cli
