#include "lifl/common/safetensors_header.h"

#include <cstring>
#include <nlohmann/json.hpp>

namespace lifl {

std::string f32SafetensorsHeader(const std::vector<TensorSpec>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    const uint64_t bytes = t.elements * sizeof(float);
    header[t.name] = {
        {"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t len = text.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &len, 8);
  return out + text;
}

}  // namespace lifl
