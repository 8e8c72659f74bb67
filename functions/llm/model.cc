#include "model.h"

#include <algorithm>
#include <fstream>
#include <random>
#include <tuple>

#include "lifl/common/safetensors_header.h"
#include "lifl/dataplane/safetensors.h"
#include "lifl/gpu/accumulate.h"

namespace lifl::llm {
namespace {

namespace fs = std::filesystem;

Error modelError(std::string detail) { return unprocessable("invalid_model", std::move(detail)); }

Result<std::string> readFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return notFound("model_not_found", "cannot read " + path.string());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// Every tensor a Llama of this config has, with its shape, in Hugging Face's names.
std::vector<std::pair<std::string, std::vector<int64_t>>> tensorShapes(const LlamaConfig& c) {
  const int64_t h = c.hiddenSize, inter = c.intermediateSize, v = c.vocabSize;
  const int64_t q = int64_t{c.heads} * c.headDim, kv = int64_t{c.kvHeads} * c.headDim;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out = {
      {"model.embed_tokens.weight", {v, h}}, {"model.norm.weight", {h}}};
  if (!c.tieWordEmbeddings) out.push_back({"lm_head.weight", {v, h}});
  for (uint32_t l = 0; l < c.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out.push_back({p + "input_layernorm.weight", {h}});
    out.push_back({p + "self_attn.q_proj.weight", {q, h}});
    out.push_back({p + "self_attn.k_proj.weight", {kv, h}});
    out.push_back({p + "self_attn.v_proj.weight", {kv, h}});
    out.push_back({p + "self_attn.o_proj.weight", {h, q}});
    out.push_back({p + "post_attention_layernorm.weight", {h}});
    out.push_back({p + "mlp.gate_proj.weight", {inter, h}});
    out.push_back({p + "mlp.up_proj.weight", {inter, h}});
    out.push_back({p + "mlp.down_proj.weight", {h, inter}});
  }
  return out;
}

std::vector<float>* slotOf(LlamaModel& m, const std::string& name) {
  if (name == "model.embed_tokens.weight") return &m.embed;
  if (name == "model.norm.weight") return &m.norm;
  if (name == "lm_head.weight") return &m.lmHead;
  const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) != 0) return nullptr;
  const size_t dot = name.find('.', prefix.size());
  const uint32_t l = static_cast<uint32_t>(std::stoul(name.substr(prefix.size(), dot)));
  if (l >= m.layers.size()) return nullptr;
  auto& w = m.layers[l];
  const std::string rest = name.substr(dot + 1);
  if (rest == "input_layernorm.weight") return &w.inputNorm;
  if (rest == "self_attn.q_proj.weight") return &w.q.weight;
  if (rest == "self_attn.k_proj.weight") return &w.k.weight;
  if (rest == "self_attn.v_proj.weight") return &w.v.weight;
  if (rest == "self_attn.o_proj.weight") return &w.o.weight;
  if (rest == "post_attention_layernorm.weight") return &w.postNorm;
  if (rest == "mlp.gate_proj.weight") return &w.gate.weight;
  if (rest == "mlp.up_proj.weight") return &w.up.weight;
  if (rest == "mlp.down_proj.weight") return &w.down.weight;
  return nullptr;
}

template <class T>
Result<T> field(const nlohmann::json& doc, const char* key, std::optional<T> fallback) {
  auto it = doc.find(key);
  if (it == doc.end() || it->is_null()) {
    if (fallback) return *fallback;
    return modelError(std::string("config.json has no ") + key);
  }
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    return modelError(std::string("config.json: ") + key + " has the wrong type");
  }
}

}  // namespace

Result<LlamaConfig> LlamaConfig::fromJson(const nlohmann::json& doc) {
  if (!doc.is_object()) return modelError("config.json is not an object");
  if (auto arch = doc.find("model_type"); arch != doc.end() && *arch != "llama")
    return modelError("model_type " + arch->dump() + " is not llama");
  LlamaConfig c;
  LIFL_TRY(hidden, field<uint32_t>(doc, "hidden_size", std::nullopt));
  LIFL_TRY(inter, field<uint32_t>(doc, "intermediate_size", std::nullopt));
  LIFL_TRY(layers, field<uint32_t>(doc, "num_hidden_layers", std::nullopt));
  LIFL_TRY(heads, field<uint32_t>(doc, "num_attention_heads", std::nullopt));
  LIFL_TRY(kv, field<uint32_t>(doc, "num_key_value_heads", heads));
  LIFL_TRY(vocab, field<uint32_t>(doc, "vocab_size", std::nullopt));
  LIFL_TRY(headDim, field<uint32_t>(doc, "head_dim", heads ? hidden / heads : 0));
  LIFL_TRY(positions, field<uint32_t>(doc, "max_position_embeddings", 2048u));
  LIFL_TRY(eps, field<double>(doc, "rms_norm_eps", 1e-6));
  LIFL_TRY(theta, field<double>(doc, "rope_theta", 10000.0));
  LIFL_TRY(tied, field<bool>(doc, "tie_word_embeddings", false));
  c.hiddenSize = hidden;
  c.intermediateSize = inter;
  c.layers = layers;
  c.heads = heads;
  c.kvHeads = kv;
  c.headDim = headDim;
  c.vocabSize = vocab;
  c.maxPositions = positions;
  c.rmsNormEps = eps;
  c.ropeTheta = theta;
  c.tieWordEmbeddings = tied;
  if (auto eos = doc.find("eos_token_id"); eos != doc.end() && !eos->is_null()) {
    const auto ids = eos->is_array() ? *eos : nlohmann::json::array({*eos});
    for (const auto& id : ids) {
      if (!id.is_number_unsigned() || id.get<uint64_t>() >= vocab)
        return modelError("config.json: eos_token_id must be token ids below vocab_size");
      c.eosTokens.push_back(id.get<uint32_t>());
    }
  }
  if (!hidden || !inter || !layers || !heads || !kv || !vocab || !headDim || headDim % 2)
    return modelError("config.json: sizes must be positive and head_dim even");
  if (heads % kv)
    return modelError("num_attention_heads must be a multiple of num_key_value_heads");
  return c;
}

nlohmann::json LlamaConfig::toJson(DType dtype) const {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", hiddenSize},
          {"intermediate_size", intermediateSize},
          {"num_hidden_layers", layers},
          {"num_attention_heads", heads},
          {"num_key_value_heads", kvHeads},
          {"head_dim", headDim},
          {"vocab_size", vocabSize},
          {"max_position_embeddings", maxPositions},
          {"rms_norm_eps", rmsNormEps},
          {"rope_theta", ropeTheta},
          {"tie_word_embeddings", tieWordEmbeddings},
          {"eos_token_id", eosTokens.empty() ? nlohmann::json(nullptr) : nlohmann::json(eosTokens)},
          {"hidden_act", "silu"},
          {"attention_bias", false},
          {"mlp_bias", false},
          {"torch_dtype", dtype == DType::F32   ? "float32"
                          : dtype == DType::F16 ? "float16"
                                                : "bfloat16"}};
}

Result<LlamaConfig> LlamaModel::loadConfig(const fs::path& dir) {
  LIFL_TRY(configText, readFile(dir / "config.json"));
  auto doc = nlohmann::json::parse(configText, nullptr, false);
  if (doc.is_discarded()) return modelError("config.json is not JSON");
  return LlamaConfig::fromJson(doc);
}

Result<LlamaModel> LlamaModel::load(const fs::path& dir) {
  LIFL_TRY(config, loadConfig(dir));
  LlamaModel m;
  m.config = config;
  m.layers.resize(config.layers);
  std::map<std::string, std::vector<int64_t>> expected;
  for (auto& [name, shape] : tensorShapes(config)) expected[name] = shape;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  if (files.empty()) return modelError("no .safetensors in " + dir.string());
  for (const auto& path : files) {
    LIFL_TRY(bytes, readFile(path));
    const auto* data = reinterpret_cast<const std::byte*>(bytes.data());
    LIFL_TRY(view, dataplane::parseSafetensors(data, bytes.size()));
    for (const auto& t : view.tensors) {
      auto want = expected.find(t.name);
      if (want == expected.end()) {
        if (t.name == "lm_head.weight" && config.tieWordEmbeddings) continue;  // tied anyway
        if (t.name.find("rotary_emb") != std::string::npos) continue;          // HF's buffers
        return modelError(path.filename().string() + ": unexpected tensor " + t.name);
      }
      if (t.shape != want->second)
        return modelError(t.name + " has the wrong shape for config.json");
      if (!t.dtype) return modelError(t.name + ": dtype " + t.dtypeName + " (F32, F16 or BF16)");
      auto* slot = slotOf(m, t.name);
      slot->resize(t.elements);
      kernels::assign(slot->data(), data + t.begin, *t.dtype, t.elements, 1.0f);
      expected.erase(want);
    }
  }
  if (!expected.empty()) return modelError("missing tensor " + expected.begin()->first);
  if (config.tieWordEmbeddings) m.lmHead = m.embed;
  const uint64_t h = config.hiddenSize, q = uint64_t{config.heads} * config.headDim,
                 kv = uint64_t{config.kvHeads} * config.headDim, inter = config.intermediateSize;
  for (auto& l : m.layers) {
    for (auto [lin, out, in] : {std::tuple{&l.q, q, h},
                                {&l.k, kv, h},
                                {&l.v, kv, h},
                                {&l.o, h, q},
                                {&l.gate, inter, h},
                                {&l.up, inter, h},
                                {&l.down, h, inter}}) {
      lin->out = out;
      lin->in = in;
    }
  }
  return m;
}

void Linear::apply(float* y, const float* x, uint64_t rows) const {
  if (quant)
    kernels::llm::matmulQuant(y, x, *quant, rows);
  else
    kernels::llm::matmul(y, x, weight.data(), rows, in, out);
}

Result<void> LlamaModel::quantize(uint32_t bits) {
  if (bits != 8 && bits != 4) return badRequest("bad_arguments", "--quantize is int8 or int4");
  for (auto& l : layers)
    for (Linear* lin : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down})
      if (lin->in % kernels::llm::kQuantGroup)
        return modelError(
            "quantising needs every linear input (hidden_size, heads * head_dim, "
            "intermediate_size) to be a multiple of " +
            std::to_string(kernels::llm::kQuantGroup));
  for (auto& l : layers)
    for (Linear* lin : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) {
      lin->quant = kernels::llm::quantize(lin->weight.data(), lin->out, lin->in, bits);
      lin->weight = {};  // the quantised copy replaces it
    }
  return success();
}

Result<void> generateModel(const fs::path& dir, const GeneratorOptions& options) {
  const auto& c = options.config;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return internal("io_error", "cannot create " + dir.string() + ": " + ec.message());
  {
    std::ofstream config(dir / "config.json");
    config << c.toJson(options.dtype).dump(2) << "\n";
    if (!config) return internal("io_error", "cannot write config.json");
  }
  const auto shapes = tensorShapes(c);
  std::mt19937_64 rng(options.seed);
  std::normal_distribution<float> matrix(0.0f, 0.02f), norm(1.0f, 0.1f);
  const uint32_t files = std::max<uint32_t>(1, std::min<uint32_t>(options.files, shapes.size()));
  for (uint32_t f = 0; f < files; ++f) {
    std::vector<TensorSpec> specs;
    std::string data;
    for (size_t i = f; i < shapes.size(); i += files) {
      const auto& [name, shape] = shapes[i];
      TensorSpec ts{name, shape, 1};
      for (auto d : shape) ts.elements *= static_cast<uint64_t>(d);
      const bool isNorm = shape.size() == 1;
      std::vector<float> values(ts.elements);
      for (auto& v : values) v = isNorm ? norm(rng) : matrix(rng);
      if (options.dtype == DType::F32) {
        data.append(reinterpret_cast<const char*>(values.data()), values.size() * 4);
      } else {
        std::vector<uint16_t> half(values.size());
        if (options.dtype == DType::BF16) {
          kernels::toBF16(half.data(), values.data(), values.size());
        } else {
          for (size_t j = 0; j < values.size(); ++j)
            half[j] = std::bit_cast<uint16_t>(static_cast<_Float16>(values[j]));
        }
        data.append(reinterpret_cast<const char*>(half.data()), half.size() * 2);
      }
      specs.push_back(std::move(ts));
    }
    const std::string name =
        files == 1
            ? "model.safetensors"
            : "model-" + std::string(5 - std::min<size_t>(5, std::to_string(f + 1).size()), '0') +
                  std::to_string(f + 1) + "-of-" +
                  std::string(5 - std::min<size_t>(5, std::to_string(files).size()), '0') +
                  std::to_string(files) + ".safetensors";
    std::ofstream out(dir / name, std::ios::binary);
    out << safetensorsHeader(specs, options.dtype) << data;
    if (!out) return internal("io_error", "cannot write " + name);
  }
  return success();
}

}  // namespace lifl::llm
