#include "pre_tokenizer.h"

#include <unicode/regex.h>
#include <unicode/unistr.h>
#include <unicode/ustring.h>

namespace lifl::llm {
namespace {

// GPT-2's pattern, which `ByteLevel` applies when `use_regex` is true (the default).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

Error tokenizerError(std::string detail) {
  return unprocessable("invalid_tokenizer", "tokenizer.json: " + std::move(detail));
}

}  // namespace

struct PreTokenizer::Step {
  std::unique_ptr<icu::RegexPattern> pattern;  ///< null: add a prefix space
  bool keepMatches = true;                     ///< Split `Isolated`; `Removed` drops them
};

PreTokenizer::PreTokenizer() = default;
PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

Result<PreTokenizer> PreTokenizer::fromJson(const nlohmann::json& spec) {
  PreTokenizer p;
  auto compile = [&](const std::string& regex, bool keep) -> Result<void> {
    UErrorCode status = U_ZERO_ERROR;
    UParseError where{};
    std::unique_ptr<icu::RegexPattern> compiled(
        icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(regex), 0, where, status));
    if (U_FAILURE(status))
      return tokenizerError("the pre-tokenizer pattern " + regex + " does not compile (" +
                            u_errorName(status) + " at offset " + std::to_string(where.offset) +
                            ")");
    p.steps_.push_back({std::move(compiled), keep});
    return success();
  };
  std::vector<const nlohmann::json*> parts;  // the pre-tokenizers, in order
  if (spec.is_null()) return p;
  if (!spec.is_object()) return tokenizerError("pre_tokenizer is not an object");
  if (spec.value("type", "") == "Sequence") {
    const auto list = spec.find("pretokenizers");
    if (list == spec.end() || !list->is_array())
      return tokenizerError("a Sequence pre-tokenizer needs a pretokenizers list");
    for (const auto& s : *list) parts.push_back(&s);
  } else {
    parts.push_back(&spec);
  }
  try {
    for (const auto* s : parts) {
      const std::string type = s->value("type", "");
      if (type == "ByteLevel") {
        if (s->value("add_prefix_space", false)) p.steps_.push_back({nullptr, true});
        if (s->value("use_regex", true)) LIFL_TRYV(compile(kGpt2Pattern, true));
      } else if (type == "Split") {
        const auto& pattern = s->at("pattern");
        const std::string behavior = s->value("behavior", "Isolated");
        if (s->value("invert", false) || (behavior != "Isolated" && behavior != "Removed"))
          return tokenizerError("Split with behavior " + behavior +
                                " is not supported (Isolated and Removed are)");
        std::string regex;
        if (pattern.contains("Regex")) {
          regex = pattern.at("Regex").get<std::string>();
        } else {  // a literal string
          const auto literal =
              icu::UnicodeString::fromUTF8(pattern.at("String").get<std::string>());
          std::string quoted;
          icu::UnicodeString("\\Q").append(literal).append("\\E").toUTF8String(quoted);
          regex = quoted;
        }
        LIFL_TRYV(compile(regex, behavior == "Isolated"));
      } else {
        return tokenizerError("pre-tokenizer " + type +
                              " is not supported (ByteLevel, Split and Sequence are)");
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return tokenizerError(e.what());
  }
  return p;
}

Result<std::vector<std::string>> PreTokenizer::split(std::string_view text) const {
  UErrorCode status = U_ZERO_ERROR;
  int32_t units = 0;
  u_strFromUTF8(nullptr, 0, &units, text.data(), static_cast<int32_t>(text.size()), &status);
  if (status == U_INVALID_CHAR_FOUND)
    return badRequest("invalid_request", "the text is not valid UTF-8");
  std::vector<icu::UnicodeString> pieces{icu::UnicodeString::fromUTF8(
      icu::StringPiece(text.data(), static_cast<int32_t>(text.size())))};
  for (const auto& step : steps_) {
    std::vector<icu::UnicodeString> next;
    for (const auto& piece : pieces) {
      if (!step.pattern) {  // ByteLevel's add_prefix_space
        next.push_back(piece.length() > 0 && piece.charAt(0) == u' '
                           ? piece
                           : icu::UnicodeString(u" ").append(piece));
        continue;
      }
      status = U_ZERO_ERROR;
      std::unique_ptr<icu::RegexMatcher> m(step.pattern->matcher(piece, status));
      if (U_FAILURE(status)) return internal("tokenizer", u_errorName(status));
      int32_t last = 0;
      while (m->find(status) && U_SUCCESS(status)) {
        const int32_t from = m->start(status), to = m->end(status);
        // Copies (a temporary substring would alias `piece`, which is replaced below).
        if (from > last) next.emplace_back(piece, last, from - last);
        if (step.keepMatches && to > from) next.emplace_back(piece, from, to - from);
        last = to;
      }
      if (last < piece.length()) next.emplace_back(piece, last);
    }
    pieces = std::move(next);
  }
  std::vector<std::string> out(pieces.size());
  for (size_t i = 0; i < pieces.size(); ++i) pieces[i].toUTF8String(out[i]);
  return out;
}

}  // namespace lifl::llm
