// Layout of a partial aggregate object, shared by the aggregators that write and fold them
// and by the agent that re-sends or reclaims them when an aggregator dies.
//
//   [PartialHeader, 64 B][InputRecord x inputCapacity][client key x keyCapacity][pad to 64]
//   [float acc[elements]]
//
// The client keys (a hash of ce-source and ce-id per client update summed in) say exactly
// which accepted updates a partial covers, so a restarted agent knows which survived.
//
// A partial lists the inputs folded into it. Each input's header points back at the
// partial (container = partial generation) once the partial is sealed, so after a crash
// the agent can tell inputs already covered by a sealed partial from inputs to re-deliver.
#pragma once

#include <cstdint>
#include <cstring>

#include "lifl/dataplane/object_store.h"

namespace lifl::dataplane {

struct PartialHeader {
  double weightSum = 0;  ///< sum of n_i over the inputs
  uint32_t clients = 0;  ///< client updates covered
  uint32_t inputCount = 0;
  uint32_t inputCapacity = 0;
  uint32_t keyCapacity = 0;  ///< client keys it has room for (one per client covered)
  uint64_t elements = 0;
  uint64_t accOffset = 0;  ///< byte offset of acc[] in the payload
  double foldSeconds = 0;  ///< time the leaves below spent folding these clients' updates
  uint64_t reserved[2] = {};
};
static_assert(sizeof(PartialHeader) == 64);

struct InputRecord {
  uint64_t offset;
  uint64_t generation;
};

inline uint64_t partialKeysOffset(uint32_t inputCapacity) {
  return sizeof(PartialHeader) + uint64_t{inputCapacity} * sizeof(InputRecord);
}
inline uint64_t partialAccOffset(uint32_t inputCapacity, uint32_t keyCapacity) {
  uint64_t end = partialKeysOffset(inputCapacity) + uint64_t{keyCapacity} * sizeof(uint64_t);
  return (end + 63) / 64 * 64;
}
inline uint64_t partialBytes(uint64_t elements, uint32_t inputCapacity, uint32_t keyCapacity) {
  return partialAccOffset(inputCapacity, keyCapacity) + elements * sizeof(float);
}

/// Typed access to a partial object in this process's mapping.
class PartialView {
 public:
  explicit PartialView(const ObjectRef& object) : object_(object) {}
  PartialHeader& header() const { return *reinterpret_cast<PartialHeader*>(object_.data()); }
  InputRecord* inputs() const {
    return reinterpret_cast<InputRecord*>(object_.data() + sizeof(PartialHeader));
  }
  /// One key per client update summed in: min(clients, keyCapacity) of them.
  uint64_t* keys() const {
    return reinterpret_cast<uint64_t*>(object_.data() + partialKeysOffset(header().inputCapacity));
  }
  float* acc() const { return reinterpret_cast<float*>(object_.data() + header().accOffset); }
  /// True when the header is consistent with the object's size (checked before folding).
  bool valid() const {
    if (object_.size() < sizeof(PartialHeader)) return false;
    const auto& h = header();
    return h.inputCount <= h.inputCapacity &&
           h.accOffset == partialAccOffset(h.inputCapacity, h.keyCapacity) &&
           h.accOffset + h.elements * sizeof(float) <= object_.size();
  }

 private:
  ObjectRef object_;
};

}  // namespace lifl::dataplane
