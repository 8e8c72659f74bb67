#pragma once

/* May the socket sending `msg` reach instance `dst`? The agent reaches and is reached by
 * every instance; others only instances of their own group. A sender or destination the
 * agent has not registered is refused. */
static __always_inline int may_reach(struct sk_msg_md* msg, __u32 dst) {
  __u32 port = msg->local_port; /* host byte order */
  __u32 key = dst;
  __u32* from = bpf_map_lookup_elem(&lifl_port_grp, &port);
  __u32* to = bpf_map_lookup_elem(&lifl_inst_grp, &key);
  if (!from || !to) return 0;
  if (*from == LIFL_GROUP_ANY || *to == LIFL_GROUP_ANY) return 1;
  return *from != LIFL_GROUP_NONE && *from == *to;
}

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
