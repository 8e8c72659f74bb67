#include "lifl/cli/numpy_files.h"

#include <zip.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <vector>

#include "lifl/cli/args.h"
#include "lifl/common/safetensors_header.h"

namespace lifl::cli {
namespace {

Error numpyError(const std::string& what) { return badRequest("bad_numpy_file", what); }

struct Array {
  std::string dtype;  ///< safetensors dtype
  std::vector<int64_t> shape;
  std::string bytes;
};

/// One .npy image (format versions 1-3): magic, version, header length, a Python dict
/// literal {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }, then the data.
Result<Array> parseNpy(const std::string& npy, const std::string& what) {
  if (npy.size() < 10 || npy.compare(0, 6, "\x93NUMPY") != 0)
    return numpyError(what + " is not a .npy array");
  const auto major = static_cast<uint8_t>(npy[6]);
  uint64_t headerLen = 0, start = 0;
  if (major == 1) {
    headerLen = static_cast<uint8_t>(npy[8]) | static_cast<uint8_t>(npy[9]) << 8;
    start = 10;
  } else if (major == 2 || major == 3) {
    if (npy.size() < 12) return numpyError(what + " is truncated");
    for (int i = 3; i >= 0; --i) headerLen = headerLen << 8 | static_cast<uint8_t>(npy[8 + i]);
    start = 12;
  } else {
    return numpyError(what + " has .npy format version " + std::to_string(major));
  }
  if (start + headerLen > npy.size()) return numpyError(what + " is truncated");
  const std::string header = npy.substr(start, headerLen);
  std::smatch m;
  if (!std::regex_search(header, m, std::regex(R"('descr'\s*:\s*'([^']+)')")))
    return numpyError(what + ": no descr in the .npy header");
  const std::string descr = m[1];
  if (std::regex_search(header, std::regex(R"('fortran_order'\s*:\s*True)")))
    return numpyError(what + " is in Fortran order; save it with np.ascontiguousarray");
  if (!std::regex_search(header, m, std::regex(R"('shape'\s*:\s*\(([^)]*)\))")))
    return numpyError(what + ": no shape in the .npy header");
  Array a;
  uint64_t elements = 1;
  std::stringstream dims(m[1].str());
  for (std::string d; std::getline(dims, d, ',');) {
    if (d.find_first_not_of(" ") == std::string::npos) continue;
    const int64_t v = std::stoll(d);
    if (v < 0) return numpyError(what + " has a negative dimension");
    a.shape.push_back(v);
    elements *= static_cast<uint64_t>(v);
  }
  static const std::map<std::string, std::pair<std::string, uint32_t>> kinds = {
      {"<f4", {"F32", 4}}, {"<f2", {"F16", 2}}, {"|i1", {"I8", 1}}, {"<f8", {"F64", 8}}};
  auto kind = kinds.find(descr);
  if (kind == kinds.end())
    return numpyError(what + " has dtype " + descr + "; use float32, float16, float64 or int8");
  const uint64_t bytes = elements * kind->second.second;
  if (npy.size() - start - headerLen != bytes)
    return numpyError(what + " holds " + std::to_string(npy.size() - start - headerLen) +
                      " data bytes, its shape needs " + std::to_string(bytes));
  const char* data = npy.data() + start + headerLen;
  if (kind->second.first == "F64") {  // updates are float32 at most
    a.dtype = "F32";
    a.bytes.resize(elements * sizeof(float));
    for (uint64_t i = 0; i < elements; ++i) {
      double d;
      std::memcpy(&d, data + i * 8, 8);
      const auto f = static_cast<float>(d);
      std::memcpy(a.bytes.data() + i * 4, &f, 4);
    }
  } else {
    a.dtype = kind->second.first;
    a.bytes.assign(data, bytes);
  }
  return a;
}

/// The arrays of a .npz (a zip of NAME.npy members), through libzip.
Result<std::map<std::string, Array>> parseNpz(const std::string& path) {
  int err = 0;
  std::unique_ptr<zip_t, decltype(&zip_close)> z(zip_open(path.c_str(), ZIP_RDONLY, &err),
                                                 &zip_close);
  if (!z) return numpyError(path + " is not a readable .npz (zip) file");
  std::map<std::string, Array> out;
  const zip_int64_t n = zip_get_num_entries(z.get(), 0);
  for (zip_int64_t i = 0; i < n; ++i) {
    zip_stat_t st;
    if (zip_stat_index(z.get(), static_cast<zip_uint64_t>(i), 0, &st) != 0)
      return numpyError(path + ": cannot read member " + std::to_string(i));
    std::string name = st.name;
    if (name.size() < 5 || name.compare(name.size() - 4, 4, ".npy") != 0)
      return numpyError(path + ": member " + name + " is not a .npy array");
    std::unique_ptr<zip_file_t, decltype(&zip_fclose)> f(
        zip_fopen_index(z.get(), static_cast<zip_uint64_t>(i), 0), &zip_fclose);
    if (!f) return numpyError(path + ": cannot open member " + name);
    std::string bytes(st.size, '\0');
    if (zip_fread(f.get(), bytes.data(), st.size) != static_cast<zip_int64_t>(st.size))
      return numpyError(path + ": member " + name + " is truncated");
    LIFL_TRY(array, parseNpy(bytes, path + ":" + name));
    out[name.substr(0, name.size() - 4)] = std::move(array);
  }
  if (out.empty()) return numpyError(path + " holds no arrays");
  return out;
}

/// Safetensors of named arrays; wider elements first, so each starts aligned to its size.
std::string toSafetensors(const std::map<std::string, Array>& arrays) {
  std::vector<const std::pair<const std::string, Array>*> order;
  for (const auto& a : arrays) order.push_back(&a);
  auto width = [](const std::string& d) { return d == "F32" ? 4 : d == "F16" ? 2 : 1; };
  std::stable_sort(order.begin(), order.end(), [&](auto* x, auto* y) {
    return width(x->second.dtype) > width(y->second.dtype);
  });
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  std::string data;
  for (const auto* a : order) {
    header[a->first] = {{"dtype", a->second.dtype},
                        {"shape", a->second.shape},
                        {"data_offsets", {offset, offset + a->second.bytes.size()}}};
    offset += a->second.bytes.size();
    data += a->second.bytes;
  }
  return encodeSafetensorsHeader(header) + data;
}

}  // namespace

Result<std::string> updateBodyFromFile(const std::string& path, const std::string& tensorName) {
  const std::filesystem::path p(path);
  const std::string ext = p.extension().string();
  if (ext == ".npz") {
    LIFL_TRY(arrays, parseNpz(path));
    return toSafetensors(arrays);
  }
  LIFL_TRY(bytes, readFile(path));
  if (ext == ".npy") {
    LIFL_TRY(array, parseNpy(bytes, path));
    std::map<std::string, Array> one;
    one[tensorName.empty() ? p.stem().string() : tensorName] = std::move(array);
    return toSafetensors(one);
  }
  return bytes;  // safetensors: the gateway validates it
}

}  // namespace lifl::cli
