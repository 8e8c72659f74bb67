#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace lifl {

std::string base64Encode(std::string_view in);
/// Standard alphabet with padding; nullopt on any invalid character or length.
std::optional<std::string> base64Decode(std::string_view in);
/// The URL-safe alphabet (RFC 4648 section 5), without padding: tokens in HTTP headers.
/// Decoding takes the canonical encoding only (unused bits zero).
std::string base64UrlEncode(std::string_view in);
std::optional<std::string> base64UrlDecode(std::string_view in);

}  // namespace lifl
