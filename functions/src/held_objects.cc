#include "lifl/functions/held_objects.h"

namespace lifl::fn {

bool HeldObjects::ours(const dataplane::ObjectHandle& handle) const {
  auto object = store_.resolve(handle);
  return object && object.value().owner() == self_;
}

void HeldObjects::note(const dataplane::ObjectHandle& handle) {
  held_.emplace(handle.offset, handle.generation);
  if (held_.size() < pruneAt_) return;
  // Most of what a long-lived instance took on has been freed or passed on since: forgotten
  // here, so that the set stays as small as what the instance holds (amortised O(1)).
  std::erase_if(held_, [&](const auto& h) { return !ours({h.first, 0, h.second}); });
  pruneAt_ = std::max<size_t>(1024, 2 * held_.size());
}

void HeldObjects::releaseOwned() {
  for (const auto& [offset, generation] : held_) {
    const dataplane::ObjectHandle handle{offset, 0, generation};
    auto object = store_.resolve(handle);
    if (object && object.value().owner() == self_ &&
        object.value().kind() != dataplane::ObjectKind::Control)
      store_.release(handle);
  }
  held_.clear();
  pruneAt_ = 1024;
}

}  // namespace lifl::fn
