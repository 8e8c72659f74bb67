#include "lifl/common/safetensors_header.h"

#include <cstring>
#include <nlohmann/json.hpp>

namespace lifl {

std::string safetensorsHeader(const std::vector<TensorSpec>& tensors, DType dtype) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    const uint64_t bytes = t.elements * dtypeSize(dtype);
    header[t.name] = {{"dtype", dtypeName(dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  return encodeSafetensorsHeader(header);
}

std::string encodeSafetensorsHeader(const nlohmann::json& header) {
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t len = text.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &len, 8);
  return out + text;
}

}  // namespace lifl
