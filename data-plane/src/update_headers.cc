#include "lifl/dataplane/update_headers.h"

#include "lifl/common/text.h"

namespace lifl::dataplane {

Result<UpdateMeta> parseUpdateHeaders(const HeaderLookup& header) {
  auto bad = [](std::string detail) { return badRequest("bad_header", std::move(detail)); };
  if (header("ce-specversion") != "1.0") return bad("ce-specversion must be 1.0");
  if (header("ce-type") != "dev.lifl.update") return bad("ce-type must be dev.lifl.update");
  UpdateMeta m;
  m.id = std::string(header("ce-id"));
  m.source = std::string(header("ce-source"));
  if (m.id.empty() || m.id.size() > 256) return bad("ce-id must be 1-256 characters");
  if (m.source.empty() || m.source.size() > 256) return bad("ce-source must be 1-256 characters");
  auto round = parseUnsigned(header("ce-round"));
  if (!round || *round > UINT32_MAX) return bad("ce-round must be a non-negative integer");
  m.round = static_cast<uint32_t>(*round);
  auto n = parseUnsigned(header("ce-numexamples"));
  if (!n || *n == 0 || *n > (1ull << 24))
    return bad("ce-numexamples must be an integer from 1 to 16777216");
  m.numExamples = *n;
  auto ct = header("content-type");
  if (!ct.empty() && !iequals(ct, "application/octet-stream"))
    return bad("Content-Type must be application/octet-stream (a safetensors body)");
  return m;
}

}  // namespace lifl::dataplane
