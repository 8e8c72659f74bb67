/* Maps of the sk_msg router. Names stay under 16 characters (kernel limit). */
#pragma once

/* Instance id -> that instance's established TCP socket. */
struct {
  __uint(type, BPF_MAP_TYPE_SOCKHASH);
  __uint(max_entries, LIFL_MAX_INSTANCES);
  __type(key, __u32);
  __type(value, __u64);
} lifl_socks SEC(".maps");

/* The local port of an instance's socket -> its isolation group: who is sending is known by
 * the socket it sends on, never from the descriptor it writes. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, LIFL_MAX_INSTANCES);
  __type(key, __u32);
  __type(value, __u32);
} lifl_port_grp SEC(".maps");

/* Instance id -> its isolation group (the destination's). */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, LIFL_MAX_INSTANCES);
  __type(key, __u32);
  __type(value, __u32);
} lifl_inst_grp SEC(".maps");

/* Instance id -> counters. Entries are created by the agent when an instance is attached
 * and deleted when it exits, so the BPF side only looks up. */
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(max_entries, LIFL_MAX_INSTANCES);
  __type(key, __u32);
  __type(value, struct lifl_route_counters);
} lifl_counters SEC(".maps");
