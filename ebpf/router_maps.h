/* Maps of the sk_msg router. Names stay under 16 characters (kernel limit). */
#pragma once

/* Instance id -> that instance's established TCP socket. */
struct {
  __uint(type, BPF_MAP_TYPE_SOCKHASH);
  __uint(max_entries, LIFL_MAX_INSTANCES);
  __type(key, __u32);
  __type(value, __u64);
} lifl_socks SEC(".maps");

/* Instance id -> counters. Entries are created by the agent when an instance is attached
 * and deleted when it exits, so the BPF side only looks up. */
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(max_entries, LIFL_MAX_INSTANCES);
  __type(key, __u32);
  __type(value, struct lifl_route_counters);
} lifl_counters SEC(".maps");
