// Hugging Face `tokenizer.json` byte-level BPE (GPT-2, Llama 3): text split into words by
// the file's pre-tokenizer (pre_tokenizer.h), each word's bytes mapped to printable
// characters, then merged pair by pair in the order of `model.merges`; added tokens (e.g.
// <|begin_of_text|>) match first, whole. Decoding maps the characters back to bytes.
// tests/integration/llm_tokenizer_test.py checks it against a reference, and against the
// `tokenizers` library where that is installed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "lifl/common/error.h"
#include "pre_tokenizer.h"
#include "tokenizer.h"

namespace lifl::llm {

class BpeTokenizer final : public Tokenizer {
 public:
  static Result<std::unique_ptr<BpeTokenizer>> load(const std::filesystem::path& file);
  Result<std::vector<uint32_t>> encode(std::string_view text) const override;
  /// The text of the tokens; added (special) tokens contribute nothing.
  std::string decode(const std::vector<uint32_t>& tokens) const override;
  uint32_t size() const { return static_cast<uint32_t>(idToToken_.size()); }

 private:
  void encodeWord(std::string_view word, std::vector<uint32_t>& out) const;

  std::unordered_map<std::string, uint32_t> vocab_;      ///< byte-level token -> id
  std::unordered_map<std::string, uint32_t> mergeRank_;  ///< "a b" -> rank
  std::vector<std::pair<std::string, uint32_t>> added_;  ///< added tokens, longest first
  std::unordered_map<uint32_t, std::string> idToToken_;
  std::unordered_map<uint32_t, bool> special_;
  PreTokenizer pre_;
};

}  // namespace lifl::llm
