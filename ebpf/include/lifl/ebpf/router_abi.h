/* ABI shared by the BPF router (ebpf/router.bpf.c) and its C++ loader. Fixed-width fields,
 * explicit padding; the C++ side checks sizes with static_assert. Keep in step with
 * common/include/lifl/common/descriptor.h. */
#ifndef LIFL_EBPF_ROUTER_ABI_H
#define LIFL_EBPF_ROUTER_ABI_H

#define LIFL_DESCRIPTOR_SIZE 64
#define LIFL_DESCRIPTOR_DST_OFFSET 0
#define LIFL_DESCRIPTOR_SRC_OFFSET 4
#define LIFL_MAX_INSTANCES 65536

/* Isolation groups (a job's instances, a chain's): an instance reaches only its own group's
 * instances and the agent. NONE: not assigned (reaches the agent only); ANY: the agent. */
#define LIFL_GROUP_NONE 0u
#define LIFL_GROUP_ANY 0xFFFFFFFFu

/* Per-instance counters (the "eBPF sidecar"), one per CPU in a PERCPU_HASH keyed by
 * instance id; the agent sums over CPUs. */
struct lifl_route_counters {
  unsigned long long delivered_msgs; /* descriptors redirected into this instance */
  unsigned long long delivered_bytes;
  unsigned long long sent_msgs;    /* descriptors this instance sent */
  unsigned long long dropped_msgs; /* sent by this instance to a missing destination */
};

#endif
