#include "lifl/dataplane/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "lifl/common/safetensors_header.h"
#include "lifl/gpu/accumulate.h"

namespace lifl::dataplane {
namespace {

using nlohmann::json;

Error malformed(std::string detail) {
  return badRequest("malformed_safetensors", std::move(detail));
}

// Element sizes of every dtype the safetensors format defines, so that files with dtypes we
// do not aggregate are still parsed exactly and rejected with the right code.
const std::unordered_map<std::string, uint32_t>& knownDtypes() {
  static const std::unordered_map<std::string, uint32_t> k = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};
  return k;
}

}  // namespace

const TensorView* SafetensorsView::find(const std::string& name) const {
  auto it = std::lower_bound(tensors.begin(), tensors.end(), name,
                             [](const TensorView& t, const std::string& n) { return t.name < n; });
  return it != tensors.end() && it->name == name ? &*it : nullptr;
}

Result<SafetensorsView> parseSafetensors(const std::byte* data, uint64_t size) {
  if (size < 8) return malformed("body is shorter than the 8-byte header length");
  uint64_t headerLen = 0;
  std::memcpy(&headerLen, data, 8);  // little-endian on every host we build for
  if (headerLen == 0) return malformed("header length is zero");
  if (headerLen > kMaxSafetensorsHeader) return malformed("header length exceeds 16 MiB");
  if (headerLen > size - 8) return malformed("header length runs past the end of the body");
  const char* h = reinterpret_cast<const char*>(data + 8);
  json header = json::parse(h, h + headerLen, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return malformed("header is not valid JSON");
  if (!header.is_object()) return malformed("header is not a JSON object");

  SafetensorsView view;
  view.dataStart = 8 + headerLen;
  const uint64_t dataSize = size - view.dataStart;
  for (auto& [name, t] : header.items()) {
    if (name == "__metadata__") {
      if (!t.is_object()) return malformed("__metadata__ must be an object");
      for (auto& [k, v] : t.items())
        if (!v.is_string()) return malformed("__metadata__ values must be strings");
      continue;
    }
    if (!t.is_object()) return malformed("tensor " + name + " is not an object");
    auto dt = t.find("dtype");
    auto sh = t.find("shape");
    auto off = t.find("data_offsets");
    if (dt == t.end() || !dt->is_string()) return malformed("tensor " + name + " has no dtype");
    if (sh == t.end() || !sh->is_array()) return malformed("tensor " + name + " has no shape");
    if (off == t.end() || !off->is_array() || off->size() != 2)
      return malformed("tensor " + name + " needs data_offsets [begin, end]");
    TensorView tv;
    tv.name = name;
    tv.dtypeName = dt->get<std::string>();
    auto known = knownDtypes().find(tv.dtypeName);
    if (known == knownDtypes().end())
      return malformed("tensor " + name + " has unknown dtype " + tv.dtypeName);
    tv.dtype = parseDType(tv.dtypeName);
    tv.elements = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) return malformed("tensor " + name + " has a bad dimension");
      uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && tv.elements > (uint64_t{1} << 40) / dim)
        return malformed("tensor " + name + " shape overflows");
      tv.elements *= dim;
      tv.shape.push_back(static_cast<int64_t>(dim));
    }
    for (const auto& o : *off)
      if (!o.is_number_unsigned()) return malformed("tensor " + name + " has a bad data offset");
    uint64_t b = (*off)[0].get<uint64_t>(), e = (*off)[1].get<uint64_t>();
    if (b > e) return malformed("tensor " + name + " has begin > end");
    if (e > dataSize) return malformed("tensor " + name + " runs past the end of the body");
    if (e - b != tv.elements * known->second)
      return malformed("tensor " + name + " byte size does not match its shape and dtype");
    if ((view.dataStart + b) % known->second != 0)
      return malformed("tensor " + name + " is not aligned to its element size");
    tv.begin = view.dataStart + b;
    tv.end = view.dataStart + e;
    view.tensors.push_back(std::move(tv));
  }
  // Tensors must tile the data section exactly: no overlap, no holes, no trailing bytes.
  std::vector<const TensorView*> byOffset;
  for (const auto& t : view.tensors) byOffset.push_back(&t);
  std::sort(byOffset.begin(), byOffset.end(), [](auto* a, auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t cursor = view.dataStart;
  for (const auto* t : byOffset) {
    if (t->begin < cursor) return malformed("tensors " + t->name + " overlaps another tensor");
    if (t->begin > cursor) return malformed("data section has a gap before tensor " + t->name);
    cursor = t->end;
  }
  if (cursor != size) return malformed("data section has trailing bytes after the last tensor");
  std::sort(view.tensors.begin(), view.tensors.end(),
            [](const TensorView& a, const TensorView& b) { return a.name < b.name; });
  return view;
}

Result<std::vector<EncodedTensor>> matchModel(const SafetensorsView& view, const JobSpec& spec,
                                              bool allowInt8) {
  std::vector<EncodedTensor> out;
  size_t used = 0;
  for (const auto& want : spec.tensors) {
    const TensorView* got = view.find(want.name);
    if (!got) return unprocessable("tensor_mismatch", "update has no tensor " + want.name);
    if (got->shape != want.shape)
      return unprocessable("tensor_mismatch", "tensor " + got->name + " has the wrong shape");
    EncodedTensor e{got};
    e.cols = want.shape.empty() ? 1 : static_cast<uint64_t>(want.shape.back());
    e.rows = e.cols ? want.elements / e.cols : 0;
    used++;
    if (got->dtypeName == "I8" && allowInt8) {
      e.scales = view.find(want.name + kInt8ScaleSuffix);
      if (!e.scales)
        return unprocessable("tensor_mismatch",
                             "int8 tensor " + got->name + " needs " + got->name + kInt8ScaleSuffix);
      used++;
      auto scaleShape = want.shape.empty() ? std::vector<int64_t>{1} : want.shape;
      const uint64_t blocks = scaleShape.back() =
          static_cast<int64_t>(e.scales->shape.empty() ? 0 : e.scales->shape.back());
      for (uint32_t block : {64u, 128u})
        if (!e.block && blocks == (e.cols + block - 1) / block) e.block = block;
      if (e.scales->dtype != DType::F32 || e.scales->shape != scaleShape || !e.block)
        return unprocessable("tensor_mismatch", "scales " + e.scales->name +
                                                    " must be F32 with one value per 64 or " +
                                                    "128 values of the last dimension");
    } else if (!got->dtype) {
      return unprocessable(
          "unsupported_dtype",
          "tensor " + got->name + " has dtype " + got->dtypeName +
              (allowInt8 ? "; use F32, F16, BF16 or I8 with scales" : "; use F32, F16 or BF16"));
    }
    out.push_back(e);
  }
  if (used != view.tensors.size())
    return unprocessable("tensor_mismatch", "update has " + std::to_string(view.tensors.size()) +
                                                " tensors, the model " +
                                                std::to_string(spec.tensors.size()) +
                                                " (and a scale per int8 tensor)");
  return out;
}

Result<void> checkMatchesModel(const SafetensorsView& view, const JobSpec& spec) {
  LIFL_TRYV(matchModel(view, spec, /*allowInt8=*/false));
  return success();
}

Result<void> checkFinite(const std::byte* data, const SafetensorsView& view) {
  for (const auto& t : view.tensors) {
    if (!t.dtype) continue;
    if (uint64_t bad = kernels::countNonFinite(data + t.begin, *t.dtype, t.elements))
      return unprocessable("non_finite",
                           "tensor " + t.name + " has " + std::to_string(bad) + " NaN/Inf values");
  }
  return success();
}

std::string modelHeader(const JobSpec& spec) { return f32SafetensorsHeader(spec.tensors); }

Result<std::string> modelAsBF16(const std::byte* data, uint64_t size) {
  LIFL_TRY(view, parseSafetensors(data, size));
  std::vector<TensorSpec> tensors;
  for (const auto& t : view.tensors) {
    if (t.dtype != DType::F32)
      return internal("model_not_f32", "the model's tensor " + t.name + " is not F32");
    tensors.push_back({t.name, t.shape, t.elements});
  }
  std::string out = safetensorsHeader(tensors, DType::BF16);  // same order: sorted by name
  const uint64_t dataStart = out.size();
  uint64_t total = 0;
  for (const auto& t : tensors) total += t.elements;
  out.resize(dataStart + total * sizeof(uint16_t));
  auto* dst = reinterpret_cast<uint16_t*>(out.data() + dataStart);
  for (const auto& t : view.tensors) {
    kernels::toBF16(dst, reinterpret_cast<const float*>(data + t.begin), t.elements);
    dst += t.elements;
  }
  return out;
}

uint64_t maxUpdateBytes(const JobSpec& spec) {
  return 8 + (64ull << 10) + 256ull * spec.tensors.size() + spec.modelElements() * 4;
}

}  // namespace lifl::dataplane
