#include "lifl/common/job_spec.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <initializer_list>
#include <regex>

namespace lifl {
namespace {

using nlohmann::json;

Error specError(std::string detail) { return unprocessable("invalid_job_spec", std::move(detail)); }

json yamlNodeToJson(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      json out = json::object();
      for (const auto& kv : node) out[kv.first.as<std::string>()] = yamlNodeToJson(kv.second);
      return out;
    }
    case YAML::NodeType::Sequence: {
      json out = json::array();
      for (const auto& v : node) out.push_back(yamlNodeToJson(v));
      return out;
    }
    case YAML::NodeType::Scalar: {
      const std::string& s = node.Scalar();
      if (node.Tag() == "!") return s;  // quoted scalar stays a string
      if (s == "true" || s == "True") return true;
      if (s == "false" || s == "False") return false;
      if (s == "null" || s == "~") return nullptr;
      int64_t i = 0;
      auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), i);
      if (ec == std::errc() && p == s.data() + s.size()) return i;
      double d = 0;
      auto [p2, ec2] = std::from_chars(s.data(), s.data() + s.size(), d);
      if (ec2 == std::errc() && p2 == s.data() + s.size()) return d;
      return s;
    }
    default:
      return nullptr;
  }
}

template <class T>
Result<T> getUnsigned(const json& obj, const char* key, T fallback, T lo, T hi) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_number_integer() && !it->is_number_unsigned())
    return specError(std::string(key) + " must be an integer");
  int64_t v = it->get<int64_t>();
  if (v < static_cast<int64_t>(lo) || v > static_cast<int64_t>(hi))
    return specError(std::string(key) + " must be between " + std::to_string(lo) + " and " +
                     std::to_string(hi));
  return static_cast<T>(v);
}

/// Reads an optional string field that must be one of `choices`.
template <class T>
Result<void> readChoice(const json& obj, const char* key,
                        std::initializer_list<std::pair<const char*, T>> choices, T& out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return success();
  std::string names;
  for (const auto& [name, value] : choices) {
    if (it->is_string() && it->get<std::string>() == name) {
      out = value;
      return success();
    }
    names += names.empty() ? name : std::string(" or ") + name;
  }
  return specError(std::string(key) + " must be " + names);
}

}  // namespace

uint64_t JobSpec::modelElements() const {
  uint64_t n = 0;
  for (const auto& t : tensors) n += t.elements;
  return n;
}

json JobSpec::toJson() const {
  json tensorsJson = json::object();
  for (const auto& t : tensors) tensorsJson[t.name] = {{"dtype", "F32"}, {"shape", t.shape}};
  json model = {{"tensors", tensorsJson}};
  if (init == ModelInit::Zeros) model["init"] = "zeros";
  if (init == ModelInit::Random) {
    model["init"] = "random";
    model["seed"] = seed;
  }
  return json{
      {"id", id},
      {"model", model},
      {"clients_per_round", clientsPerRound},
      {"min_clients", minClients ? minClients : clientsPerRound},
      {"rounds", rounds},
      {"update", update == UpdateMode::Delta ? "delta" : "weights"},
      {"strategy", strategy.toJson()},
      {"dp", dp.enabled() ? nlohmann::json{{"clip_norm", dp.clipNorm},
                                           {"noise_multiplier", dp.noiseMultiplier}}
                          : nlohmann::json(nullptr)},
      {"hierarchy", levels ? nlohmann::json{{"fan_in", fanIn},
                                            {"levels", levels},
                                            {"batch", batch},
                                            {"eager", eager}}
                           : nlohmann::json{{"fan_in", fanIn}, {"batch", batch}, {"eager", eager}}},
      {"deadline_seconds", deadlineSeconds},
      {"late", late == LatePolicy::NextRound ? "next_round" : "drop"},
      {"device", device.empty() ? nlohmann::json(nullptr) : nlohmann::json(device)}};
}

Result<json> yamlToJson(std::string_view text) {
  try {
    return yamlNodeToJson(YAML::Load(std::string(text)));
  } catch (const YAML::Exception& e) {
    return badRequest("malformed_yaml", std::string("job spec is not valid YAML: ") + e.what());
  }
}

Result<JobSpec> parseJobSpec(std::string_view body, std::string_view contentType) {
  json doc;
  if (contentType.find("yaml") != std::string_view::npos) {
    LIFL_TRY(parsed, yamlToJson(body));
    doc = std::move(parsed);
  } else {
    doc = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded()) return badRequest("malformed_json", "job spec is not valid JSON");
  }
  return jobSpecFromJson(doc);
}

Result<JobSpec> jobSpecFromJson(const json& doc) {
  if (!doc.is_object()) return specError("job spec must be an object");
  JobSpec spec;
  auto id = doc.find("id");
  if (id == doc.end() || !id->is_string()) return specError("id must be a string");
  spec.id = id->get<std::string>();
  static const std::regex kIdPattern("[A-Za-z0-9][A-Za-z0-9_.-]{0,62}");
  if (!std::regex_match(spec.id, kIdPattern))
    return specError("id must be 1-63 characters of letters, digits, '_', '.', '-'");

  auto model = doc.find("model");
  if (model == doc.end() || !model->is_object()) return specError("model must be an object");
  auto tensors = model->find("tensors");
  if (tensors == model->end() || !tensors->is_object() || tensors->empty())
    return specError("model.tensors must be a non-empty object");
  uint64_t total = 0;
  for (const auto& [name, t] : tensors->items()) {
    if (name.empty() || name.size() > 256)
      return specError("tensor names must be 1-256 characters");
    if (!t.is_object()) return specError("tensor " + name + " must be an object");
    auto dtype = t.find("dtype");
    if (dtype != t.end() && (!dtype->is_string() || dtype->get<std::string>() != "F32"))
      return specError("tensor " + name + ": the global model is held in F32");
    auto shape = t.find("shape");
    if (shape == t.end() || !shape->is_array())
      return specError("tensor " + name + " needs a shape");
    TensorSpec ts{name, {}, 1};
    for (const auto& d : *shape) {
      if (!d.is_number_integer() || d.get<int64_t>() <= 0 || d.get<int64_t>() > (1ll << 32))
        return specError("tensor " + name + ": dimensions must be positive integers");
      ts.shape.push_back(d.get<int64_t>());
      ts.elements *= static_cast<uint64_t>(d.get<int64_t>());
      if (ts.elements > (1ull << 34)) return specError("tensor " + name + " is too large");
    }
    total += ts.elements;
    if (total > (1ull << 34)) return specError("model is too large");
    spec.tensors.push_back(std::move(ts));
  }
  std::sort(spec.tensors.begin(), spec.tensors.end(),
            [](const TensorSpec& a, const TensorSpec& b) { return a.name < b.name; });

  LIFL_TRYV(readChoice<ModelInit>(
      *model, "init", {{"zeros", ModelInit::Zeros}, {"random", ModelInit::Random}}, spec.init));
  LIFL_TRY(seed, getUnsigned<uint64_t>(*model, "seed", 0, 0, UINT32_MAX));
  spec.seed = seed;

  LIFL_TRY(cpr, getUnsigned<uint32_t>(doc, "clients_per_round", 1, 1, 1'000'000));
  spec.clientsPerRound = cpr;
  LIFL_TRY(minc, getUnsigned<uint32_t>(doc, "min_clients", 0, 0, cpr));
  spec.minClients = minc;
  LIFL_TRY(rounds, getUnsigned<uint32_t>(doc, "rounds", 1, 1, 1'000'000));
  spec.rounds = rounds;

  LIFL_TRYV(readChoice<UpdateMode>(doc, "update",
                                   {{"weights", UpdateMode::Weights}, {"delta", UpdateMode::Delta}},
                                   spec.update));
  auto strategy = doc.find("strategy");
  if (strategy != doc.end()) {
    LIFL_TRY(parsed, strategyFromJson(*strategy));
    spec.strategy = parsed;
  }
  // FedBuff steps from the version it applies to, whatever version each client started
  // from: only a change (delta) means the same thing against any of them.
  if (spec.strategy.asynchronous() && spec.update != UpdateMode::Delta)
    return specError(
        "fedbuff applies each client's change to the newest model: it needs "
        "update: delta");
  auto dp = doc.find("dp");
  if (dp != doc.end() && !dp->is_null()) {
    if (!dp->is_object()) return specError("dp must be an object");
    for (const auto& [key, value] : dp->items()) {
      if (key != "clip_norm" && key != "noise_multiplier")
        return specError("dp has no parameter " + key + " (clip_norm, noise_multiplier)");
      if (!value.is_number() || !std::isfinite(value.get<double>()) || value.get<double>() < 0)
        return specError("dp." + key + " must be a number >= 0");
    }
    spec.dp.clipNorm = dp->value("clip_norm", 0.0);
    spec.dp.noiseMultiplier = dp->value("noise_multiplier", 0.0);
    if (!(spec.dp.clipNorm > 0)) return specError("dp.clip_norm must be > 0");
    if (spec.update != UpdateMode::Delta)
      return specError("dp clips each client's change to the model: it needs update: delta");
    if (spec.strategy.robust())
      return specError("dp adds its noise to a weighted mean: not with strategy " +
                       spec.strategy.name());
  }
  auto hierarchy = doc.find("hierarchy");
  if (hierarchy != doc.end()) {
    if (!hierarchy->is_object()) return specError("hierarchy must be an object");
    LIFL_TRY(fan, getUnsigned<uint32_t>(*hierarchy, "fan_in", 8, 2, 4096));
    spec.fanIn = fan;
    LIFL_TRY(levels, getUnsigned<uint32_t>(*hierarchy, "levels", 0, 1, 3));
    spec.levels = levels;
    if (auto eager = hierarchy->find("eager"); eager != hierarchy->end()) {
      if (!eager->is_boolean()) return specError("hierarchy.eager must be true or false");
      spec.eager = eager->get<bool>();
    }
    LIFL_TRY(batch, getUnsigned<uint32_t>(*hierarchy, "batch", 0, 0, 4096));
    spec.batch = batch;
  }
  auto deadline = doc.find("deadline_seconds");
  if (deadline != doc.end()) {
    if (!deadline->is_number() || deadline->get<double>() <= 0)
      return specError("deadline_seconds must be a positive number");
    spec.deadlineSeconds = deadline->get<double>();
  }
  LIFL_TRYV(readChoice<LatePolicy>(
      doc, "late", {{"drop", LatePolicy::Drop}, {"next_round", LatePolicy::NextRound}}, spec.late));
  auto device = doc.find("device");
  if (device != doc.end() && !device->is_null()) {
    if (!device->is_string() ||
        (device->get<std::string>() != "cpu" && device->get<std::string>() != "cuda"))
      return specError("device must be cpu or cuda");
    spec.device = device->get<std::string>();
  }
  return spec;
}

}  // namespace lifl
