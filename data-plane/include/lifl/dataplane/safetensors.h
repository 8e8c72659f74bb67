// Safetensors parsed and validated in place: the header JSON is read from the buffer and
// every tensor is described by offsets into that same buffer; nothing is copied. Structural
// faults are 400 malformed_safetensors; a well-formed file that does not fit the job's model
// is 422 (tensor_mismatch, unsupported_dtype, non_finite).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "lifl/common/dtype.h"
#include "lifl/common/error.h"
#include "lifl/common/job_spec.h"

namespace lifl::dataplane {

struct TensorView {
  std::string name;
  std::string dtypeName;       ///< as written in the file
  std::optional<DType> dtype;  ///< empty for dtypes LIFL does not aggregate (I8, F64, ...)
  std::vector<int64_t> shape;
  uint64_t elements = 0;
  uint64_t begin = 0;  ///< absolute byte offsets in the buffer
  uint64_t end = 0;
};

struct SafetensorsView {
  std::vector<TensorView> tensors;  ///< sorted by name
  uint64_t dataStart = 0;
  const TensorView* find(const std::string& name) const;
};

/// Largest header accepted (safetensors' own limit is 100 MB; models here need far less).
inline constexpr uint64_t kMaxSafetensorsHeader = 16ull << 20;

Result<SafetensorsView> parseSafetensors(const std::byte* data, uint64_t size);
/// Names, shapes and dtypes must match the job's model (F32, F16 or BF16 accepted).
Result<void> checkMatchesModel(const SafetensorsView& view, const JobSpec& spec);
/// Rejects NaN/Inf anywhere in the tensors (422 non_finite).
Result<void> checkFinite(const std::byte* data, const SafetensorsView& view);

/// Bytes of the safetensors header (8-byte length + JSON padded to 8) for an F32 model.
std::string modelHeader(const JobSpec& spec);
/// An F32 model (safetensors) re-encoded with every tensor in BF16 (round to nearest even).
Result<std::string> modelAsBF16(const std::byte* data, uint64_t size);
/// The largest update body a job accepts: an F32 model plus a generous header allowance.
uint64_t maxUpdateBytes(const JobSpec& spec);

}  // namespace lifl::dataplane
