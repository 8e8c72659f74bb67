#include <cstring>

#include "lifl/functions/sdk.h"

namespace lifl::fn {

Result<void> ChainFunction::onEvent(Context& ctx, const Descriptor& d) {
  if (d.kind != DescriptorKind::Event)
    return badRequest("unexpected_descriptor",
                      "chain functions take events, not " + std::string(kindName(d.kind)));
  LIFL_TRY(input, ctx.store().resolve(d));
  const InstanceId next = ctx.params().value("next", kAgentInstance);
  Descriptor out;
  out.dst = next;
  out.job = d.job;
  out.correlation = d.correlation;
  auto produce = [&]() -> Result<dataplane::ObjectRef> {
    LIFL_TRY(event, readEvent(input));
    LIFL_TRY(result, handle(ctx, event));
    if (result.attributes.is_null()) result.attributes = event.attributes;
    LIFL_TRY(made, makeEvent(ctx.store(), next, result.attributes, result.data.size()));
    std::memcpy(made.second, result.data.data(), result.data.size());
    return made.first;
  };
  auto produced = produce();
  ctx.store().release(input.handle());
  if (produced) {
    // The last hop answers; an earlier one sends on (to the agent when the next hop is
    // routed: ChainManager::route).
    out.kind = ctx.params().value("last", next == kAgentInstance) ? DescriptorKind::Reply
                                                                  : DescriptorKind::Event;
    produced.value().describe(out);
    return ctx.emit(out);
  }
  LIFL_TRYV(replyFailure(ctx, d.correlation, d.job, produced.error()));
  return produced.error();
}

// Tells the gateway which request failed and why; it answers the caller with this error.
Result<void> replyFailure(Context& ctx, uint64_t correlation, uint32_t job, const Error& error) {
  nlohmann::json body = {{"status", error.status}, {"error", error.code}, {"detail", error.detail}};
  Descriptor out{};
  out.dst = kAgentInstance;
  out.kind = DescriptorKind::Failure;
  out.job = job;
  out.correlation = correlation;
  LIFL_TRY(failure, makeEvent(ctx.store(), kAgentInstance, body, 0));
  failure.first.describe(out);
  return ctx.emit(out);
}

}  // namespace lifl::fn
