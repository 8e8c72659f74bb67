// A small command-line parser: `--key value`, `--key=value`, `--flag`, and positionals.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "lifl/common/error.h"

namespace lifl::cli {

/// The bytes of a file a command names (400 bad_arguments when it cannot be read).
Result<std::string> readFile(const std::string& path);

class Args {
 public:
  /// @param flags options that take no value
  static Result<Args> parse(int argc, char** argv, int first,
                            const std::set<std::string>& flags = {});
  bool has(const std::string& key) const { return options_.count(key) != 0; }
  std::string get(const std::string& key, const std::string& fallback = "") const;
  Result<uint64_t> getUnsigned(const std::string& key, uint64_t fallback) const;
  Result<double> getDouble(const std::string& key, double fallback) const;
  /// An integer of at least 1 ("--key >= 1" otherwise).
  Result<uint64_t> getPositive(const std::string& key, uint64_t fallback) const;
  /// One of two values ("--key is a or b" otherwise).
  Result<std::string> getChoice(const std::string& key, const std::string& a,
                                const std::string& b) const {
    return getChoice(key, {a, b});
  }
  /// One of `choices`, the first where the key is absent ("--key is a, b or c" otherwise).
  Result<std::string> getChoice(const std::string& key,
                                const std::vector<std::string>& choices) const;
  const std::vector<std::string>& positionals() const { return positionals_; }
  bool wantsHelp() const { return has("help") || has("h"); }
  /// A copy of `args` with `key` set to `value`.
  static Args withOption(const Args& args, const std::string& key, const std::string& value) {
    Args copy = args;
    copy.options_[key] = value;
    return copy;
  }

 private:
  std::map<std::string, std::string> options_;
  std::vector<std::string> positionals_;
};

}  // namespace lifl::cli
