#include "lifl/functions/held_objects.h"

namespace lifl::fn {

std::optional<dataplane::ObjectRef> HeldObjects::ours(uint64_t offset, uint64_t generation) const {
  auto object = store_.resolve({offset, 0, generation});
  if (!object || object.value().owner() != self_) return std::nullopt;
  return object.value();
}

void HeldObjects::note(const dataplane::ObjectHandle& handle) {
  held_.emplace(handle.offset, handle.generation);
  if (held_.size() < pruneAt_) return;
  // Most of what a long-lived instance took on has been freed or passed on since: forgotten
  // here, so that the set stays as small as what the instance holds (amortised O(1)).
  std::erase_if(held_, [&](const auto& h) { return !ours(h.first, h.second); });
  pruneAt_ = std::max<size_t>(1024, 2 * held_.size());
}

void HeldObjects::releaseOwned() {
  for (const auto& [offset, generation] : held_)
    if (auto object = ours(offset, generation);
        object && object->kind() != dataplane::ObjectKind::Control)
      store_.release(object->handle());
  held_.clear();
  pruneAt_ = 1024;
}

}  // namespace lifl::fn
