// CloudEvents inside store objects, as they travel down a function chain:
//   [u32 attribute-JSON length][attribute JSON][data]
// The gateway writes the request's body straight into the data part.
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>
#include <utility>

#include "lifl/dataplane/object_store.h"

namespace lifl::dataplane {

/// Attributes (specversion, id, source, type, datacontenttype, extensions) and data bytes.
struct EventView {
  nlohmann::json attributes;
  const std::byte* data = nullptr;
  uint64_t size = 0;
  std::string_view text() const { return {reinterpret_cast<const char*>(data), size}; }
};

Result<EventView> readEvent(const ObjectRef& object);
/// Allocates an event object for `attributes` and `dataSize` data bytes, owned by `owner`;
/// returns the object and where its data goes.
Result<std::pair<ObjectRef, std::byte*>> makeEvent(ObjectStore& store, InstanceId owner,
                                                   const nlohmann::json& attributes,
                                                   uint64_t dataSize);
/// The same, with `data` copied in.
Result<ObjectRef> makeEvent(ObjectStore& store, InstanceId owner, const nlohmann::json& attributes,
                            std::string_view data);

}  // namespace lifl::dataplane
