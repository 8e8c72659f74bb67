#include "lifl/dataplane/event_object.h"

#include <cstring>

namespace lifl::dataplane {

Result<EventView> readEvent(const ObjectRef& object) {
  uint32_t metaLen = 0;
  if (object.size() < sizeof(metaLen))
    return badRequest("malformed_event", "event object too small");
  std::memcpy(&metaLen, object.data(), sizeof(metaLen));
  if (metaLen > object.size() - sizeof(metaLen))
    return badRequest("malformed_event", "event attributes run past the object");
  const char* meta = reinterpret_cast<const char*>(object.data() + sizeof(metaLen));
  EventView view;
  view.attributes = nlohmann::json::parse(meta, meta + metaLen, nullptr, false);
  if (view.attributes.is_discarded() || !view.attributes.is_object())
    return badRequest("malformed_event", "event attributes are not a JSON object");
  view.data = object.data() + sizeof(metaLen) + metaLen;
  view.size = object.size() - sizeof(metaLen) - metaLen;
  return view;
}

Result<std::pair<ObjectRef, std::byte*>> makeEvent(ObjectStore& store, InstanceId owner,
                                                   const nlohmann::json& attributes,
                                                   uint64_t dataSize) {
  const std::string meta = attributes.dump();
  const uint32_t metaLen = static_cast<uint32_t>(meta.size());
  LIFL_TRY(object, store.allocate(sizeof(metaLen) + metaLen + dataSize, ObjectKind::Event, owner));
  std::memcpy(object.data(), &metaLen, sizeof(metaLen));
  std::memcpy(object.data() + sizeof(metaLen), meta.data(), metaLen);
  return std::make_pair(object, object.data() + sizeof(metaLen) + metaLen);
}

Result<ObjectRef> makeEvent(ObjectStore& store, InstanceId owner, const nlohmann::json& attributes,
                            std::string_view data) {
  LIFL_TRY(made, makeEvent(store, owner, attributes, data.size()));
  std::memcpy(made.second, data.data(), data.size());
  return made.first;
}

}  // namespace lifl::dataplane
