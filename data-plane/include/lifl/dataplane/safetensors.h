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
/// How one model tensor arrives: a float tensor (F32, F16, BF16), or blockwise int8 — the
/// values as an I8 tensor of the model's shape and `<name>:scale`, F32, one scale per block of
/// 64 or 128 values along the last dimension (shape: the model's with the last dimension
/// ceil(D / block)); value = q * scale (docs/api.md "Update formats").
struct EncodedTensor {
  const TensorView* values = nullptr;
  const TensorView* scales = nullptr;  ///< int8 only
  uint32_t block = 0;                  ///< int8: values per scale along the last dimension
  uint64_t rows = 1, cols = 1;         ///< the tensor as rows x last dimension
};
inline constexpr const char* kInt8ScaleSuffix = ":scale";
/// Each model tensor's encoding, in the model's order (names sorted), checked against the
/// model: names, shapes, dtypes; int8 only where `allowInt8` (updates, not models).
Result<std::vector<EncodedTensor>> matchModel(const SafetensorsView& view, const JobSpec& spec,
                                              bool allowInt8);
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
