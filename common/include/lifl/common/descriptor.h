// The 64-byte descriptor ABI: the only thing that moves between function instances on a
// node. The sk_msg program reads the destination from the first 4 bytes (ebpf/include/lifl/
// ebpf/router_abi.h holds the same constants for the BPF side), so `dst` must stay first.
// Objects are named by (offset, length, generation), never by pointer: every process maps
// the segment at its own address.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "lifl/ebpf/router_abi.h"

namespace lifl {

using InstanceId = uint32_t;
/// The agent's own endpoint (gateway, supervisor) on every node.
inline constexpr InstanceId kAgentInstance = 1;
inline constexpr InstanceId kFirstFunctionInstance = 16;

enum class DescriptorKind : uint16_t {
  Invalid = 0,
  Assign = 1,     ///< agent -> instance: take a role; object holds the JSON assignment
  Release = 2,    ///< agent -> instance: drop the role, go back to the warm pool
  Shutdown = 3,   ///< agent -> instance: exit
  Update = 10,    ///< gateway -> leaf: one client update (safetensors)
  Partial = 11,   ///< child -> parent: (sum w*x, sum w) of a batch of inputs
  Ack = 12,       ///< parent -> child: the partial is folded, release its inputs
  Model = 13,     ///< top -> agent: the new global model (safetensors)
  Reparent = 14,  ///< agent -> instance: send later partials to `aux`
  Flush = 15,     ///< agent -> leaf: every update of the leaf's slot has been routed to it
  Retarget = 16,  ///< agent -> middle/top: the round closed early; expect `value` clients
  Done = 17,      ///< leaf -> agent: its last partial is acknowledged; the process is free
  Event = 20,     ///< a function-chain event (payload object), hop to hop
  Reply = 21,     ///< last hop -> agent: the chain's output event
  Failure = 22,   ///< a hop failed; object holds the JSON error
  Stream = 23,    ///< last hop -> agent: one piece of a streamed reply (more follow)
};

struct Descriptor {
  uint32_t dst = 0;  ///< destination instance id; routed on by the BPF program
  uint32_t src = 0;  ///< sending instance id
  DescriptorKind kind = DescriptorKind::Invalid;
  uint16_t flags = 0;
  uint32_t job = 0;          ///< node-local job slot
  uint64_t offset = 0;       ///< object offset in the node's segment (0: no object)
  uint64_t length = 0;       ///< payload bytes
  uint64_t generation = 0;   ///< object generation; a stale descriptor fails to resolve
  uint64_t correlation = 0;  ///< request id (chains) or update sequence (aggregation)
  uint32_t round = 0;        ///< FL round the message belongs to
  uint32_t aux = 0;          ///< kind-specific (Reparent: new parent; Model: fold ns/update)
  uint64_t value = 0;        ///< kind-specific (Update: ce-numexamples; Model: client count)

  bool hasObject() const { return generation != 0; }
};

static_assert(sizeof(Descriptor) == LIFL_DESCRIPTOR_SIZE, "descriptor ABI is 64 bytes");
static_assert(offsetof(Descriptor, dst) == LIFL_DESCRIPTOR_DST_OFFSET, "dst must come first");
static_assert(offsetof(Descriptor, src) == LIFL_DESCRIPTOR_SRC_OFFSET, "src follows dst");

std::string_view kindName(DescriptorKind kind);

}  // namespace lifl
