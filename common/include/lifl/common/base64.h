#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace lifl {

std::string base64Encode(std::string_view in);
/// Standard alphabet with padding; nullopt on any invalid character or length.
std::optional<std::string> base64Decode(std::string_view in);

}  // namespace lifl
