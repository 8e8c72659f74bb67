#include "tokenizer.h"

#include "bpe.h"

namespace lifl::llm {

Result<std::unique_ptr<Tokenizer>> Tokenizer::forModel(const std::filesystem::path& dir,
                                                       uint32_t vocab) {
  if (std::filesystem::exists(dir / "tokenizer.json")) {
    LIFL_TRY(bpe, BpeTokenizer::load(dir / "tokenizer.json"));
    return std::unique_ptr<Tokenizer>(std::move(bpe));
  }
  return std::unique_ptr<Tokenizer>(new ByteTokenizer(vocab));
}

Result<std::vector<uint32_t>> ByteTokenizer::encode(std::string_view text) const {
  if (vocab_ < 256)
    return unprocessable("no_tokenizer", "this model's vocabulary (" + std::to_string(vocab_) +
                                             ") has no byte tokens: send the prompt as token ids");
  std::vector<uint32_t> out;
  out.reserve(text.size());
  for (unsigned char c : text) out.push_back(c);
  return out;
}

std::string ByteTokenizer::decode(const std::vector<uint32_t>& tokens) const {
  std::string out;
  for (uint32_t t : tokens)
    if (t < 256) out.push_back(static_cast<char>(t));
  return out;
}

}  // namespace lifl::llm
