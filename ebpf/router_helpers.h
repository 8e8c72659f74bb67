#pragma once

static __always_inline void count_delivery(__u32 dst, __u32 bytes) {
  __u32 key = dst; /* own local: its address is taken */
  struct lifl_route_counters* c = bpf_map_lookup_elem(&lifl_counters, &key);
  if (c) {
    c->delivered_msgs += 1; /* per-CPU value: no atomics needed */
    c->delivered_bytes += bytes;
  }
}

static __always_inline void count_send(__u32 src, int dropped) {
  __u32 key = src;
  struct lifl_route_counters* c = bpf_map_lookup_elem(&lifl_counters, &key);
  if (c) {
    c->sent_msgs += 1;
    if (dropped) c->dropped_msgs += 1;
  }
}
