#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace lifl {

/// Tensor element types accepted in updates; models are held in F32.
enum class DType : uint8_t { F32, F16, BF16 };

inline std::optional<DType> parseDType(std::string_view s) {
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  return std::nullopt;
}
inline std::string_view dtypeName(DType d) {
  switch (d) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
  }
  return "?";
}
inline uint32_t dtypeSize(DType d) { return d == DType::F32 ? 4 : 2; }

}  // namespace lifl
