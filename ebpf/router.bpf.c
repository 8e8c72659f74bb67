// SPDX-License-Identifier: GPL-2.0
/* LIFL's on-node router: every function instance sends 64-byte descriptors on its own
 * TCP socket; this sk_msg program reads the destination instance id from the first 4 bytes
 * and redirects the descriptor into the destination socket's receive queue (BPF_F_INGRESS).
 * The payload never moves: it stays in the shared-memory object store.
 *
 * Framing: bpf_msg_apply_bytes() limits each verdict to exactly one descriptor, so when a
 * sender coalesces several descriptors into one sendmsg the program runs once per
 * descriptor; bpf_msg_cork_bytes() holds back a partial descriptor until it is whole.
 *
 * Isolation: a descriptor goes only between instances of one group (a job's, a chain's) or
 * to and from the agent (may_reach). Another is not redirected: it becomes a dead letter. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "lifl/ebpf/router_abi.h"
#include "router_maps.h"
#include "router_helpers.h"

#ifndef BPF_F_INGRESS
#define BPF_F_INGRESS (1ULL << 0) /* a #define in uapi, so absent from vmlinux.h */
#endif

SEC("sk_msg")
int lifl_route(struct sk_msg_md* msg) {
  __u32 ids[2];
  void *data, *data_end;

  if (msg->size < LIFL_DESCRIPTOR_SIZE) {
    bpf_msg_cork_bytes(msg, LIFL_DESCRIPTOR_SIZE);
    return SK_PASS;
  }
  bpf_msg_apply_bytes(msg, LIFL_DESCRIPTOR_SIZE);

  data = msg->data;
  data_end = msg->data_end;
  if (data + 8 > data_end) {
    /* the first 8 bytes straddle a scatterlist entry: make them linear */
    if (bpf_msg_pull_data(msg, 0, 8, 0)) return SK_PASS; /* dead letter, see below */
    data = msg->data;
    data_end = msg->data_end;
    if (data + 8 > data_end) return SK_PASS; /* dead letter, see below */
  }
  __builtin_memcpy(ids, data, sizeof(ids));

  /* Never answer SK_DROP for a missing destination: the kernel keeps a dropping verdict
   * on the sender's psock (apply_bytes exhausted, eval not reset), so every later send on
   * that socket would fail with EACCES. An instance that sends to a peer that just died
   * must keep working, so a failed redirect becomes SK_PASS: the descriptor goes to the
   * agent's end of the sender's connection (msg->sk_redir is only set on success), where
   * the router drains it as a dead letter. */
  if (!may_reach(msg, ids[0])) {
    count_send(ids[1], 1);
    return SK_PASS; /* a dead letter, as for a missing destination */
  }
  long verdict = bpf_msg_redirect_hash(msg, &lifl_socks, &ids[0], BPF_F_INGRESS);
  if (verdict == SK_PASS) count_delivery(ids[0], LIFL_DESCRIPTOR_SIZE);
  count_send(ids[1], verdict != SK_PASS);
  return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
