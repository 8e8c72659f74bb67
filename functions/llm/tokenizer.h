// Text to token ids and back. The byte tokenizer: token id b < 256 is byte b; ids from 256 up
// are special tokens with no text. (Hugging Face tokenizer.json byte-level BPE: to come.)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "lifl/common/error.h"

namespace lifl::llm {

class ByteTokenizer {
 public:
  /// @pre vocab >= 256 (else encode() refuses text: prompts must then be token id lists)
  explicit ByteTokenizer(uint32_t vocab) : vocab_(vocab) {}
  Result<std::vector<uint32_t>> encode(std::string_view text) const;
  /// The bytes of the tokens that have text (they may split a UTF-8 character).
  std::string decode(const std::vector<uint32_t>& tokens) const;

 private:
  uint32_t vocab_;
};

}  // namespace lifl::llm
