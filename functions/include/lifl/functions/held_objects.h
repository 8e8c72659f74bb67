// The objects a function instance has taken on since it was assigned: those it was sent (the
// descriptors it handled) and those it allocated. At a Release it frees what of them it still
// owns. Not every object it owns: a peer that heard of the instance's next assignment may have
// made an object the instance's own already, queued behind the Release or still being
// written, and freeing that would lose the event (a re-deployed chain's next request, a reused
// leaf's first updates).
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <utility>

#include "lifl/common/descriptor.h"
#include "lifl/dataplane/object_store.h"

namespace lifl::fn {

class HeldObjects {
 public:
  HeldObjects(dataplane::ObjectStore& store, InstanceId self) : store_(store), self_(self) {}
  void note(const dataplane::ObjectHandle& handle);
  /// Frees what is still this instance's (control objects aside), and forgets everything.
  void releaseOwned();
  size_t size() const { return held_.size(); }

 private:
  /// The object, if it is still this instance's: it resolves, and is owned by it.
  std::optional<dataplane::ObjectRef> ours(uint64_t offset, uint64_t generation) const;
  std::set<std::pair<uint64_t, uint64_t>> held_;  ///< (offset, generation)
  size_t pruneAt_ = 1024;                         ///< forget what is gone when this many
  dataplane::ObjectStore& store_;
  InstanceId self_;
};

}  // namespace lifl::fn
