// A Llama-architecture decoder loaded from a Hugging Face style folder (config.json and one
// or more *.safetensors, F32/F16/BF16; weights widened to fp32 for the CPU path), and the
// generator that writes a random-weight model of any shape in that format (tests, benchmarks:
// no weights are ever downloaded).
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "lifl/common/dtype.h"
#include "lifl/common/error.h"
#include "lifl/gpu/llm.h"

namespace lifl::llm {

/// config.json's fields that the forward pass uses, with Hugging Face's names and defaults.
struct LlamaConfig {
  uint32_t hiddenSize = 0;
  uint32_t intermediateSize = 0;
  uint32_t layers = 0;   ///< num_hidden_layers
  uint32_t heads = 0;    ///< num_attention_heads
  uint32_t kvHeads = 0;  ///< num_key_value_heads (default: heads)
  uint32_t headDim = 0;  ///< head_dim (default: hidden_size / heads)
  uint32_t vocabSize = 0;
  uint32_t maxPositions = 2048;  ///< max_position_embeddings
  double rmsNormEps = 1e-6;
  double ropeTheta = 10000.0;
  bool tieWordEmbeddings = false;
  std::vector<uint32_t> eosTokens;  ///< eos_token_id (a number or a list): generation stops
  bool isEos(uint32_t token) const {
    return std::find(eosTokens.begin(), eosTokens.end(), token) != eosTokens.end();
  }

  static Result<LlamaConfig> fromJson(const nlohmann::json& doc);
  nlohmann::json toJson(DType dtype) const;
};

/// A linear layer's [out][in] weight: fp32, or quantised (W8A16 / W4A16) by --quantize.
struct Linear {
  std::vector<float> weight;
  std::optional<kernels::llm::QuantMatrix> quant;
  uint64_t out = 0, in = 0;
  /// y[rows][out] = x[rows][in] times the weight.
  void apply(float* y, const float* x, uint64_t rows) const;
};

struct LayerWeights {
  std::vector<float> inputNorm, postNorm;
  Linear q, k, v, o, gate, up, down;
};

struct LlamaModel {
  LlamaConfig config;
  std::vector<float> embed;  ///< [vocab][hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> norm;
  std::vector<float> lmHead;  ///< [vocab][hidden]; the embedding when tied

  /// Loads config.json and every *.safetensors of the folder; each tensor's shape is checked.
  static Result<LlamaModel> load(const std::filesystem::path& dir);
  /// config.json alone.
  static Result<LlamaConfig> loadConfig(const std::filesystem::path& dir);
  /// Quantises every layer's linear weights (8 or 4 bits, groups of kQuantGroup along their
  /// inputs); embeddings, norms and the head stay fp32. Their inputs must be multiples of
  /// the group.
  Result<void> quantize(uint32_t bits);
};

struct GeneratorOptions {
  LlamaConfig config;
  DType dtype = DType::F32;
  uint64_t seed = 1;
  uint32_t files = 1;  ///< shards: model-0000k-of-0000n.safetensors
};
/// Writes config.json and the safetensors of a random model: matrices ~ N(0, 0.02^2) (as
/// Hugging Face initialises Llama), norm weights 1 + N(0, 0.1^2) so that they matter.
Result<void> generateModel(const std::filesystem::path& dir, const GeneratorOptions& options);

}  // namespace lifl::llm
