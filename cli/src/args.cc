#include "lifl/cli/args.h"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <sstream>

namespace lifl::cli {

Result<std::string> readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return badRequest("bad_arguments", "cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Result<Args> Args::parse(int argc, char** argv, int first, const std::set<std::string>& flags) {
  Args a;
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h") {
      a.options_["help"] = "";
      continue;
    }
    if (arg.rfind("--", 0) != 0) {
      a.positionals_.push_back(arg);
      continue;
    }
    std::string key = arg.substr(2), value;
    if (auto eq = key.find('='); eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
    } else if (key != "help" && !flags.count(key)) {
      if (i + 1 >= argc) return badRequest("bad_arguments", "--" + key + " needs a value");
      value = argv[++i];
    }
    a.options_[key] = value;
  }
  return a;
}

std::string Args::get(const std::string& key, const std::string& fallback) const {
  auto it = options_.find(key);
  return it == options_.end() ? fallback : it->second;
}

Result<uint64_t> Args::getUnsigned(const std::string& key, uint64_t fallback) const {
  auto it = options_.find(key);
  if (it == options_.end()) return fallback;
  uint64_t v = 0;
  const auto& s = it->second;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size())
    return badRequest("bad_arguments", "--" + key + " must be a non-negative integer");
  return v;
}

Result<uint64_t> Args::getPositive(const std::string& key, uint64_t fallback) const {
  LIFL_TRY(v, getUnsigned(key, fallback));
  if (v == 0) return badRequest("bad_arguments", "--" + key + " >= 1");
  return v;
}

Result<std::string> Args::getChoice(const std::string& key,
                                    const std::vector<std::string>& choices) const {
  const std::string v = get(key, choices.front());
  if (std::find(choices.begin(), choices.end(), v) != choices.end()) return v;
  std::string listed;
  for (size_t i = 0; i < choices.size(); ++i)
    listed += (i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ") + choices[i];
  return badRequest("bad_arguments", "--" + key + " is " + listed);
}

Result<double> Args::getDouble(const std::string& key, double fallback) const {
  auto it = options_.find(key);
  if (it == options_.end()) return fallback;
  try {
    size_t used = 0;
    double v = std::stod(it->second, &used);
    if (used != it->second.size()) throw std::invalid_argument("trailing");
    return v;
  } catch (const std::exception&) {
    return badRequest("bad_arguments", "--" + key + " must be a number");
  }
}

}  // namespace lifl::cli
