#include "lifl/common/descriptor.h"

namespace lifl {

std::string_view kindName(DescriptorKind kind) {
  switch (kind) {
    case DescriptorKind::Invalid:
      return "invalid";
    case DescriptorKind::Assign:
      return "assign";
    case DescriptorKind::Release:
      return "release";
    case DescriptorKind::Shutdown:
      return "shutdown";
    case DescriptorKind::Update:
      return "update";
    case DescriptorKind::Partial:
      return "partial";
    case DescriptorKind::Ack:
      return "ack";
    case DescriptorKind::Model:
      return "model";
    case DescriptorKind::Reparent:
      return "reparent";
    case DescriptorKind::Flush:
      return "flush";
    case DescriptorKind::Retarget:
      return "retarget";
    case DescriptorKind::Done:
      return "done";
    case DescriptorKind::Event:
      return "event";
    case DescriptorKind::Reply:
      return "reply";
    case DescriptorKind::Failure:
      return "failure";
    case DescriptorKind::Stream:
      return "stream";
  }
  return "unknown";
}

}  // namespace lifl
