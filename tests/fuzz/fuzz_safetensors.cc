// libFuzzer target: an update body as the gateway receives it. The safetensors parser must
// refuse malformed input with an error, never crash or read out of bounds; what it accepts
// goes on through the model match (int8 allowed) and the finite check, as an update does.
#include <cstddef>
#include <cstdint>

#include "lifl/common/job_spec.h"
#include "lifl/dataplane/safetensors.h"

namespace {

const lifl::JobSpec& spec() {
  static const lifl::JobSpec s = [] {
    auto parsed = lifl::parseJobSpec(
        R"({"id": "fuzz", "clients_per_round": 1, "rounds": 1,
            "model": {"tensors": {"a": {"dtype": "F32", "shape": [2, 3]},
                                  "b": {"dtype": "F32", "shape": [4]}}, "init": "zeros"}})",
        "application/json");
    return parsed.value();
  }();
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto* bytes = reinterpret_cast<const std::byte*>(data);
  auto view = lifl::dataplane::parseSafetensors(bytes, size);
  if (!view) return 0;
  if (auto matched = lifl::dataplane::matchModel(view.value(), spec(), true); matched)
    (void)lifl::dataplane::checkFinite(bytes, view.value());
  return 0;
}
