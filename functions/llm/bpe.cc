#include "bpe.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

namespace lifl::llm {
namespace {

Error tokenizerError(std::string detail) {
  return unprocessable("invalid_tokenizer", "tokenizer.json: " + std::move(detail));
}

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

/// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others are moved to
/// code points from 256 up, so that every byte is a visible character.
const std::vector<std::string>& byteChars() {
  static const std::vector<std::string> table = [] {
    std::vector<uint32_t> cp(256, 0);
    std::vector<bool> printable(256, false);
    for (uint32_t b = '!'; b <= '~'; ++b) printable[b] = true;
    for (uint32_t b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (uint32_t b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) cp[b] = printable[b] ? b : next++;
    std::vector<std::string> out(256);
    for (uint32_t b = 0; b < 256; ++b) out[b] = utf8(cp[b]);
    return out;
  }();
  return table;
}

const std::unordered_map<std::string, uint8_t>& charBytes() {
  static const auto inverse = [] {
    std::unordered_map<std::string, uint8_t> m;
    for (uint32_t b = 0; b < 256; ++b) m[byteChars()[b]] = static_cast<uint8_t>(b);
    return m;
  }();
  return inverse;
}

/// Length of the UTF-8 character starting at s[i] (1 for a stray continuation byte).
size_t charLength(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  return std::min(n, s.size() - i);
}

}  // namespace

Result<std::unique_ptr<BpeTokenizer>> BpeTokenizer::load(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) return notFound("model_not_found", "cannot read " + file.string());
  auto doc = nlohmann::json::parse(in, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return tokenizerError("not a JSON object");
  auto owned = std::unique_ptr<BpeTokenizer>(new BpeTokenizer());
  BpeTokenizer& t = *owned;
  try {
    const auto& model = doc.at("model");
    if (model.value("type", "") != "BPE") return tokenizerError("model.type is not BPE");
    for (const auto& [token, id] : model.at("vocab").items()) {
      t.vocab_[token] = id.get<uint32_t>();
      t.idToToken_[id.get<uint32_t>()] = token;
    }
    uint32_t rank = 0;
    for (const auto& m : model.at("merges")) {
      const std::string pair = m.is_string()
                                   ? m.get<std::string>()
                                   : m.at(0).get<std::string>() + " " + m.at(1).get<std::string>();
      t.mergeRank_.emplace(pair, rank++);
    }
    for (const auto& a : doc.value("added_tokens", nlohmann::json::array())) {
      const uint32_t id = a.at("id");
      const std::string content = a.at("content");
      t.added_.push_back({content, id});
      t.idToToken_[id] = content;
      t.special_[id] = true;
    }
  } catch (const nlohmann::json::exception& e) {
    return tokenizerError(e.what());
  }
  std::sort(t.added_.begin(), t.added_.end(),
            [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  const auto pre = doc.find("pre_tokenizer");
  LIFL_TRY(splitter, PreTokenizer::fromJson(pre == doc.end() ? nlohmann::json() : *pre));
  t.pre_ = std::move(splitter);
  return owned;
}

void BpeTokenizer::encodeWord(std::string_view word, std::vector<uint32_t>& out) const {
  std::vector<std::string> symbols;
  for (unsigned char c : word) symbols.push_back(byteChars()[c]);
  for (;;) {
    uint32_t best = std::numeric_limits<uint32_t>::max();
    size_t at = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto r = mergeRank_.find(symbols[i] + " " + symbols[i + 1]);
      if (r != mergeRank_.end() && r->second < best) {
        best = r->second;
        at = i;
      }
    }
    if (best == std::numeric_limits<uint32_t>::max()) break;
    // Every occurrence of the best pair, left to right.
    const std::string a = symbols[at], b = symbols[at + 1];
    std::vector<std::string> merged;
    for (size_t i = 0; i < symbols.size(); ++i) {
      if (i + 1 < symbols.size() && symbols[i] == a && symbols[i + 1] == b) {
        merged.push_back(a + b);
        ++i;
      } else {
        merged.push_back(symbols[i]);
      }
    }
    symbols = std::move(merged);
  }
  for (const auto& s : symbols) {
    auto id = vocab_.find(s);
    if (id != vocab_.end()) {
      out.push_back(id->second);
    } else {  // a symbol the vocabulary lacks: its bytes one by one, where they exist
      for (size_t i = 0; i < s.size(); i += charLength(s, i)) {
        auto one = vocab_.find(s.substr(i, charLength(s, i)));
        if (one != vocab_.end()) out.push_back(one->second);
      }
    }
  }
}

Result<std::vector<uint32_t>> BpeTokenizer::encode(std::string_view text) const {
  std::vector<uint32_t> out;
  size_t start = 0;
  auto plain = [&](std::string_view part) -> Result<void> {
    LIFL_TRY(words, pre_.split(part));
    for (const auto& word : words) encodeWord(word, out);
    return success();
  };
  for (size_t i = 0; i < text.size();) {
    bool matched = false;
    for (const auto& [content, id] : added_) {
      if (!content.empty() && text.substr(i, content.size()) == content) {
        LIFL_TRYV(plain(text.substr(start, i - start)));
        out.push_back(id);
        i += content.size();
        start = i;
        matched = true;
        break;
      }
    }
    if (!matched) ++i;
  }
  LIFL_TRYV(plain(text.substr(start)));
  return out;
}

std::string BpeTokenizer::decode(const std::vector<uint32_t>& tokens) const {
  std::string out;
  for (uint32_t t : tokens) {
    if (special_.count(t)) continue;
    auto it = idToToken_.find(t);
    if (it == idToToken_.end()) continue;
    const std::string& s = it->second;
    for (size_t i = 0; i < s.size();) {
      const size_t n = charLength(s, i);
      auto b = charBytes().find(s.substr(i, n));
      if (b != charBytes().end())
        out += static_cast<char>(b->second);
      else
        out += s.substr(i, n);
      i += n;
    }
  }
  return out;
}

}  // namespace lifl::llm
