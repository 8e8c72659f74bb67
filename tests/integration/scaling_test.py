"""Scaling: an idle job gives its aggregators back (scale to zero), the warm pool keeps only
its target of idle instances (scale down), and the next update brings a tree back; cold
starts are counted. Within a round, a leaf that falls behind its arrivals (its queue depth,
from the eBPF delivered counter and the runtime's processed counter) gets a new leaf for the
rest of its slot."""
import os
import re
import signal
import time
import unittest

import numpy as np

from lifl_harness import PlatformTestCase, assert_model_equal, fedavg, job_spec, random_update

CONFIG = """
functions:
  warm_pool: 2
  idle_seconds: 0.5
"""


class Scaling(PlatformTestCase):
    config = CONFIG
    warm_pool = 2

    def wait_for(self, cond, what, timeout=10):
        deadline = time.monotonic() + timeout
        while not cond():
            self.assertLess(time.monotonic(), deadline, what)
            time.sleep(0.05)

    def test_scale_to_zero_and_back(self):
        self.client.create_job(job_spec("idle", clients=12, rounds=2, fan_in=4))
        instances = self.client.job("idle")["plan"]["instances"]
        self.assertEqual(len(instances), 4)  # 3 leaves + top...
        self.assertEqual(instances[0], instances[3], "...the top runs in its first leaf's process")
        self.assertEqual(instances[2], 0, "the third slot gets a process when updates near it")
        self.assertEqual(len(set(instances) - {0}), 2)
        cold_starts = lambda: float(re.search(r"^lifl_cold_starts_total (\S+)",
                                              self.platform.metrics(), re.M).group(1))
        self.assertEqual(cold_starts(), 0, "2 processes from a warm pool of 2")
        metrics = self.platform.metrics()
        self.assertRegex(metrics, r'lifl_aggregators\{role="leaf"\} 1\b')  # + 1 in the top's
        self.assertRegex(metrics, r'lifl_aggregators\{role="top"\} 1\b')

        self.wait_for(lambda: self.client.job("idle")["scaled_to_zero"], "job never scaled to zero")
        self.assertEqual(self.client.job("idle")["plan"]["instances"], [])
        instances = self.platform.instances()
        self.wait_for(lambda: len(self.platform.instances()) == 2 and
                      not any(i["busy"] for i in self.platform.instances()),
                      f"the pool did not shrink to its warm target: {instances}")

        rng = np.random.default_rng(4)
        updates = []
        for c in range(12):
            tensors, exact = random_update(rng)
            self.client.push("idle", tensors, client=f"c{c}", num_examples=c + 1, round_=0)
            updates.append((c + 1, exact))
        status = self.client.wait_round("idle", 1, timeout=20)
        self.assertEqual(status["history"][0]["clients"], 12)
        model, _ = self.client.pull("idle")
        assert_model_equal(self, model, fedavg(updates))
        # Back from zero: the first two slots' processes came from the pool, the third's
        # (started as the second slot filled) was a cold start.
        self.assertEqual(cold_starts(), 1)


class QueueDepthScaleUp(PlatformTestCase):
    # Separate processes per role, so that stopping the leaf stops nothing else.
    config = "functions:\n  warm_pool: 4\n  scale_up_queue_depth: 2\n  colocate_roles: false\n"

    def queue_depth(self, instance):
        return next(i["queue_depth"] for i in self.platform.instances() if i["id"] == instance)

    def test_a_stalled_leaf_gets_a_helper(self):
        self.client.create_job(job_spec("qd", clients=8, rounds=1, fan_in=8))
        leaf = self.client.job("qd")["plan"]["instances"][0]
        rng = np.random.default_rng(11)
        updates = [random_update(rng) for _ in range(8)]
        push = lambda c: self.client.push("qd", updates[c][0], client=f"c{c}", num_examples=c + 1,
                                          round_=0)
        push(0)
        deadline = time.monotonic() + 10
        while self.queue_depth(leaf) != 0:  # the leaf folded c0: it keeps up
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.02)
        pid = self.platform.pid_of(leaf)
        os.kill(pid, signal.SIGSTOP)  # the leaf stops folding: its queue grows
        try:
            push(1)  # queue 0 -> 1: still routed to the leaf
            push(2)  # queue 1 -> 2
            self.assertEqual(self.queue_depth(leaf), 2)
            self.assertEqual(self.client.job("qd")["scale_ups"], 0)
            for c in range(3, 8):  # queue 2 >= 2: the rest of the slot goes to a new leaf
                push(c)
            status = self.client.job("qd")
            self.assertEqual(status["scale_ups"], 1, status)
            leaves = [n for n in status["plan"]["nodes"] if n["role"] == "leaf"]
            self.assertEqual([n["expected"] for n in leaves], [3, 5])
            self.assertEqual(status["plan"]["instances"][0], leaf)
            # Two updates and the Flush that closed its slot; no more updates went to it.
            self.assertEqual(self.queue_depth(leaf), 3)
        finally:
            os.kill(pid, signal.SIGCONT)
        status = self.client.wait_round("qd", 1, timeout=20)
        self.assertEqual(status["history"][0]["clients"], 8)
        model, _ = self.client.pull("qd")
        assert_model_equal(self, model, fedavg([(c + 1, updates[c][1]) for c in range(8)]))
        self.assertRegex(self.platform.metrics(), r'lifl_scale_ups_total\{job="qd"\} 1\b')


class Backpressure(PlatformTestCase):
    # Separate processes, no scale-up: the stalled leaf is the only thing that moves.
    config = ("functions:\n  warm_pool: 4\n  scale_up_queue_depth: 0\n  colocate_roles: false\n"
              "  max_buffered_updates: 6\n")

    def test_uploads_wait_while_the_leaves_are_behind(self):
        import threading
        # Two slots of 7, both leaves stopped before they fold anything: every upload stays
        # in the store. The bound on a round's objects is max(6, fan-in + 2) + 4 working
        # partials = 13, so the 14th body waits until the leaves resume.
        self.client.create_job(job_spec("bp", clients=14, rounds=1, fan_in=7))
        leaves = self.client.job("bp")["plan"]["instances"][:2]
        self.assertNotIn(0, leaves, "the first two slots have processes from the start")
        rng = np.random.default_rng(12)
        updates = [random_update(rng) for _ in range(14)]
        push = lambda c: self.client.push("bp", updates[c][0], client=f"c{c}", num_examples=c + 1,
                                          round_=0)
        pids = [self.platform.pid_of(leaf) for leaf in leaves]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            for c in range(13):
                push(c)
            done = threading.Event()

            def late():
                from lifl_client import Client
                Client(self.platform.url).push("bp", updates[13][0], client="c13",
                                               num_examples=14, round_=0)
                done.set()
            t = threading.Thread(target=late)
            t.start()
            self.assertFalse(done.wait(1.0), "the 14th upload was read past the bound")
            self.assertEqual(self.client.job("bp")["received"], 13)
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)  # the leaves fold and seal: room again
        self.assertTrue(done.wait(20), "the upload never went through after the leaves resumed")
        t.join(5)
        status = self.client.wait_round("bp", 1, timeout=20)
        self.assertEqual(status["history"][0]["clients"], 14)
        model, _ = self.client.pull("bp")
        assert_model_equal(self, model, fedavg([(c + 1, updates[c][1]) for c in range(14)]))


if __name__ == "__main__":
    unittest.main()
