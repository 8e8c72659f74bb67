// libFuzzer target: a job spec as POST /v1/jobs receives it, as JSON and as YAML. The parser
// must answer every input with a spec or an error, never crash.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "lifl/common/job_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)lifl::parseJobSpec(text, "application/json");
  (void)lifl::parseJobSpec(text, "application/yaml");
  return 0;
}
