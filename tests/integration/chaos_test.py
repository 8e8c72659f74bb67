"""Fault injection across nodes (issue 8): a controller and three agents in network
namespaces (lifl_cluster), randomised, with the seed printed (replay with LIFL_CHAOS_SEED).

- kill -9 of the controller at a random moment while clients push, 20 trials: after its
  restart every update is counted exactly once;
- kill -9 of an agent (any of the three, the root included) at a random moment while clients
  push, 20 trials: every update the victim accepted is either in the round or named in the
  job's `lost` list with a reason naming the victim, never silently dropped; the lost ones
  and the rest pushed to live nodes give a round with every client exactly once;
- clients that time out and retry with the same ce-id, to the same gateway or another: each
  update counted once;
- the link between two agents cut mid-round (routes to each other blackholed in their
  namespaces, each still reaching the controller): the round re-plans and completes.

Each round's model is checked against numpy's FedAvg of exactly the updates it should hold.
"""
import os
import random
import shutil
import socket
import threading
import time
import unittest
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lifl_client import LiflError, encode_safetensors
from lifl_cluster import Cluster, sh
from lifl_harness import assert_model_equal, failed_so_far, fedavg, job_spec, random_update

MODEL = {"dense.weight": (40, 50), "dense.bias": (50,)}
CLIENTS = 24
TRIALS = int(os.environ.get("LIFL_CHAOS_TRIALS", 20))


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("ip"), "needs root and iproute2 (netns)")
class ChaosTest(unittest.TestCase):
    def setUp(self):
        self.cluster = Cluster(warm_pool=3)
        seed = int(os.environ.get("LIFL_CHAOS_SEED", random.randrange(1 << 30)))
        print(f"\n{self.id()}: chaos seed {seed}")
        self.rng = random.Random(seed)
        self.data = np.random.default_rng(seed)

    def tearDown(self):
        if failed_so_far(self):
            print("\n" + self.cluster.logs())
        self.cluster.close()

    def updates(self, prefix):
        out = {}
        for i in range(CLIENTS):
            tensors, exact = random_update(self.data, MODEL)
            out[f"{prefix}-{i}"] = (int(self.data.integers(1, 100)), tensors, exact)
        return out

    def push(self, job, client, node, updates, ce_id=None):
        """One push; the reply, or None if it was not accepted (an exception)."""
        n, tensors, _ = updates[client]
        gateway = self.cluster.gateway(node)
        gateway.timeout = 10
        try:
            return gateway.push(job, tensors, client=client, num_examples=n, round_=0, ce_id=ce_id)
        except (LiflError, OSError) as e:
            return None
        finally:
            gateway.close()

    def push_all(self, job, assignments, updates):
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda a: self.push(job, a[0], a[1], updates), assignments))

    def check_round(self, job, updates, clients):
        """Round 1 holds exactly `clients`: the count, and the model the controller keeps
        (copied from the root once the round closes)."""
        status = self.cluster.client.wait_round(job, 1, timeout=60)
        self.assertEqual(status["round"], 1, status)
        self.assertEqual(status["history"][0]["clients"], len(clients), status["history"])
        deadline = time.monotonic() + 20
        while not self.cluster.client.job(job)["checkpoint"]:
            self.assertLess(time.monotonic(), deadline, "the controller never copied the model")
            time.sleep(0.05)
        expected = fedavg([(updates[c][0], updates[c][2]) for c in clients])
        got, r = self.cluster.client.pull(job)
        self.assertEqual(r, 1)
        assert_model_equal(self, got, expected)
        return status

    def test_controller_killed_at_random_moments(self):
        c = self.cluster
        for trial in range(TRIALS):
            with self.subTest(trial=trial):
                job = f"ctl{trial}"
                c.client.create_job(job_spec(job, clients=CLIENTS, rounds=1, fan_in=4, model=MODEL,
                                             deadline_seconds=120))
                updates = self.updates(job)
                assignments = [(cl, self.rng.choice("abc")) for cl in updates]
                accepted = {}

                def pusher():
                    for cl, node in assignments:
                        accepted[cl] = self.push(job, cl, node, updates)
                t = threading.Thread(target=pusher)
                t.start()
                time.sleep(self.rng.uniform(0, 0.4))
                c.controller.kill()
                c.controller.start(port=c.controller.port)
                t.join(90)
                self.assertFalse(t.is_alive())
                c.wait_nodes(3, timeout=20)
                # Clients whose push failed while the controller was away push again.
                for cl, node in assignments:
                    if accepted[cl] is None:
                        self.assertIsNotNone(self.push(job, cl, node, updates), f"{cl} refused twice")
                self.check_round(job, updates, list(updates))
                self.assertEqual(c.client.job(job)["lost"], [])

    def test_agent_killed_at_random_moments(self):
        c = self.cluster
        for trial in range(TRIALS):
            with self.subTest(trial=trial):
                job = f"agt{trial}"
                c.client.create_job(job_spec(job, clients=CLIENTS, rounds=1, fan_in=4, model=MODEL,
                                             deadline_seconds=120))
                if len(c.wait_nodes(3, timeout=30)) < 3:
                    self.fail("a node is missing")
                victim = self.rng.choice("abc")
                live = [n for n in "abc" if n != victim]
                updates = self.updates(job)
                assignments = [(cl, self.rng.choice("abc")) for cl in updates]
                cut = self.rng.randrange(1, CLIENTS)
                before = self.push_all(job, assignments[:cut], updates)
                accepted_on_victim = {cl for (cl, node), r in zip(assignments[:cut], before)
                                      if r is not None and node == victim}
                self.assertTrue(all(r is not None for r in before), "no push fails before the kill")
                c.agents[victim].kill()
                c.wait_nodes(2, timeout=20)
                status = c.client.job(job)
                lost = {e["client"]: e["reason"] for e in status["lost"]}
                # Only what the victim accepted may be lost, and each loss names the victim.
                self.assertLessEqual(set(lost), accepted_on_victim, status["lost"])
                for cl, reason in lost.items():
                    self.assertIn(victim, reason, cl)
                print(f"trial {trial}: killed {victim} (root {status['plan']['root']}) after {cut} pushes: "
                      f"{len(accepted_on_victim)} accepted there, {len(lost)} reported lost")
                # The lost clients push again (a new id: a new attempt), the others that had not
                # pushed push now, all to live nodes; the round then holds every client once.
                again = [(cl, live[i % 2]) for i, cl in enumerate(sorted(lost))]
                rest = [(cl, live[i % 2]) for i, (cl, _) in enumerate(assignments[cut:])]
                for cl, node in again:
                    self.assertIsNotNone(self.push(job, cl, node, updates, ce_id=uuid.uuid4().hex))
                self.assertTrue(all(r is not None for r in self.push_all(job, rest, updates)))
                try:
                    self.check_round(job, updates, list(updates))
                finally:  # the victim comes back for the next trial
                    c.agents[victim].start()
                    c.wait_nodes(3, timeout=30)

    def test_retries_after_a_timeout_are_counted_once(self):
        # A client that gave up waiting for the answer (it sent the whole update, then closed
        # the connection) retries with the same ce-id, to the same gateway or to another.
        c = self.cluster
        job = "retry"
        c.client.create_job(job_spec(job, clients=CLIENTS, rounds=1, fan_in=4, model=MODEL,
                                     deadline_seconds=120))
        updates = self.updates(job)
        for i, cl in enumerate(updates):
            first, retry = "abc"[i % 3], "abc"[(i + i // 3) % 3]
            ce_id = f"{cl}-attempt"
            if i % 2 == 0:  # half of them time out on their first attempt
                n, tensors, _ = updates[cl]
                body = encode_safetensors(tensors)
                host, port = c.agents[first].url.replace("http://", "").rsplit(":", 1)
                head = (f"POST /v1/jobs/{job}/updates HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\n"
                        f"ce-type: dev.lifl.update\r\nce-id: {ce_id}\r\nce-source: {cl}\r\n"
                        f"ce-round: 0\r\nce-numexamples: {n}\r\nContent-Type: application/octet-stream\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode()
                with socket.create_connection((host, int(port)), timeout=5) as sock:
                    sock.sendall(head + body)
                time.sleep(0.02)
            reply = self.push(job, cl, retry, updates, ce_id=ce_id)
            self.assertIsNotNone(reply, cl)
            self.assertTrue(reply["accepted"], reply)
        self.check_round(job, updates, list(updates))

    def test_link_between_two_agents_cut_mid_round(self):
        c = self.cluster
        job = "link"
        c.client.create_job(job_spec(job, clients=CLIENTS, rounds=1, fan_in=4, model=MODEL,
                                     deadline_seconds=120))
        root = c.client.job(job)["plan"]["root"]
        member = self.rng.choice([n for n in "abc" if n != root])
        updates = self.updates(job)
        assignments = [(cl, "abc"[i % 3]) for i, cl in enumerate(updates)]
        half = CLIENTS // 2
        self.assertTrue(all(self.push_all(job, assignments[:half], updates)))
        ip = {n: self.cluster.agents[n].host for n in "abc"}
        for a, b in ((root, member), (member, root)):
            sh("ip", "netns", "exec", self.cluster.ns(a), "ip", "route", "add", "blackhole", f"{ip[b]}/32")
        try:
            self.assertTrue(all(self.push_all(job, assignments[half:], updates)))
            status = self.check_round(job, updates, list(updates))
        finally:
            for a, b in ((root, member), (member, root)):
                sh("ip", "netns", "exec", self.cluster.ns(a), "ip", "route", "del", "blackhole", f"{ip[b]}/32",
                   check=False)
        self.assertEqual(status["lost"], [], "nothing is lost: the member's partial goes round the cut")
        relayed = 0
        for line in urllib.request.urlopen(c.controller.url + "/metrics", timeout=5).read().decode().splitlines():
            if line.startswith("lifl_partials_relayed_total"):
                relayed = float(line.split()[-1])
        self.assertGreaterEqual(relayed, 1, "the partial went through the controller")


if __name__ == "__main__":
    unittest.main(verbosity=2)
