// Text to token ids and back, for a model folder: its `tokenizer.json` (byte-level BPE,
// bpe.h) when it has one, else byte tokens (id b < 256 is byte b; ids from 256 up are
// special, with no text). Prompts may also come as token ids.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "lifl/common/error.h"

namespace lifl::llm {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual Result<std::vector<uint32_t>> encode(std::string_view text) const = 0;
  /// The text of the tokens (bytes: a character may be split across tokens).
  virtual std::string decode(const std::vector<uint32_t>& tokens) const = 0;
  /// The folder's tokenizer.json, else byte tokens for a vocabulary of `vocab`.
  static Result<std::unique_ptr<Tokenizer>> forModel(const std::filesystem::path& dir,
                                                     uint32_t vocab);
};

class ByteTokenizer final : public Tokenizer {
 public:
  /// @pre vocab >= 256 (else encode() refuses text: prompts must then be token id lists)
  explicit ByteTokenizer(uint32_t vocab) : vocab_(vocab) {}
  Result<std::vector<uint32_t>> encode(std::string_view text) const override;
  std::string decode(const std::vector<uint32_t>& tokens) const override;

 private:
  uint32_t vocab_;
};

}  // namespace lifl::llm
