#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lifl/common/job_spec.h"

namespace lifl {

/// A safetensors header from its JSON: the 8-byte little-endian length, then the JSON padded
/// with spaces to a multiple of 8 bytes (so the data that follows starts aligned).
std::string encodeSafetensorsHeader(const nlohmann::json& header);
/// The safetensors header (8-byte little-endian length + JSON padded to 8 bytes) of tensors
/// of one dtype stored back to back in the given order; the data section follows it.
std::string safetensorsHeader(const std::vector<TensorSpec>& tensors, DType dtype);
inline std::string f32SafetensorsHeader(const std::vector<TensorSpec>& tensors) {
  return safetensorsHeader(tensors, DType::F32);
}

}  // namespace lifl
