// The pre-tokenizer of a Hugging Face tokenizer.json: the text cut into the pieces that BPE
// then merges within. Byte-level BPE models use regular expressions over Unicode classes
// (GPT-2's pattern inside `ByteLevel`, Llama 3's in a `Split`); they run here on ICU's regex
// engine, with the Unicode tables that make \p{L} and \p{N} exact.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "lifl/common/error.h"

namespace lifl::llm {

class PreTokenizer {
 public:
  /// From tokenizer.json's `pre_tokenizer` (null: the text stays whole): `ByteLevel`
  /// (`use_regex` applies GPT-2's pattern, `add_prefix_space`), `Split` (a `Regex` or
  /// `String` pattern, behavior `Isolated` or `Removed`), or a `Sequence` of them. Others are
  /// refused, so that no text is cut in a way the model was not trained with.
  static Result<PreTokenizer> fromJson(const nlohmann::json& spec);
  PreTokenizer();
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  /// The pieces of `text`, in order; 400 when it is not valid UTF-8.
  Result<std::vector<std::string>> split(std::string_view text) const;

 private:
  struct Step;
  std::vector<Step> steps_;
};

}  // namespace lifl::llm
