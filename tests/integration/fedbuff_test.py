"""FedBuff (asynchronous) through the real platform, against a numpy implementation of the rule
in docs/strategies.md written here: every K buffered deltas the model steps by
server_learning_rate * sum(s_i n_i d_i) / sum(n_i), s_i = 1/sqrt(1 + tau_i), where tau_i is
the version the update is applied to minus the version its client trained from (`ce-round`).

There is no round barrier: updates pushed while a full buffer is aggregated are accepted
(202) into the next buffer, and updates from older versions are taken up to max_staleness;
staler ones, and ones from versions not yet published, are refused with 409.

Tolerance: fp32 sums of at most K weighted terms against float64, 2e-5 of each tensor's
largest magnitude (harness RTOL); a wrong staleness factor moves values by more than 1e-2."""
import math
import os
import signal
import unittest

import numpy as np

from lifl_client import LiflError
from lifl_harness import MODEL, PlatformTestCase, assert_model_equal, job_spec, random_update

K = 3
MAX_STALENESS = 2
RATE = 0.5


class FedBuff(PlatformTestCase):
    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(7)
        self.buffers = {}  # version the buffer is applied to -> [(n, staleness, delta)]
        self.pushes = 0

    def push(self, job, trained_from, n=None, client=None):
        """Pushes a random delta trained from version `trained_from`; records it in the buffer
        the gateway says it went to."""
        tensors, exact = random_update(self.rng)
        n = n or int(self.rng.integers(1, 50))
        self.pushes += 1
        self.last_id = f"u{self.pushes}"
        reply = self.client.push(job, tensors, client=client or f"c{self.pushes}", num_examples=n,
                                 round_=trained_from, ce_id=self.last_id)
        applied_to = reply["round"]
        self.buffers.setdefault(applied_to, []).append((n, applied_to - trained_from, exact))
        return applied_to

    def reference(self, versions):
        x = {k: np.zeros(s) for k, s in MODEL.items()}
        for v in range(versions):
            buf = self.buffers[v]
            total = sum(n for n, _, _ in buf)
            x = {k: x[k] + RATE * sum(n / math.sqrt(1 + tau) * d[k] for n, tau, d in buf) / total
                 for k in x}
        return x

    def check_version(self, job, version):
        st = self.client.wait_round(job, version, timeout=30)
        got, served = self.client.pull(job)
        self.assertEqual(served, version)
        assert_model_equal(self, got, self.reference(version))
        return st

    def test_buffers_of_staleness_weighted_deltas(self):
        job = "buff"
        self.client.create_job(job_spec(job, clients=K, rounds=4, fan_in=2, update="delta",
                                        strategy={"name": "fedbuff", "max_staleness": MAX_STALENESS,
                                                  "server_learning_rate": RATE}))
        spec = self.client.job(job)["spec"]["strategy"]
        self.assertEqual(spec, {"name": "fedbuff", "max_staleness": MAX_STALENESS,
                                "server_learning_rate": RATE})
        # Version 0 -> 1: three fresh deltas. The next two are pushed at once, with no wait
        # for the model: they are taken into the next buffer (no round barrier).
        self.assertEqual([self.push(job, 0) for _ in range(K)], [0, 0, 0])
        self.assertEqual([self.push(job, 0) for _ in range(2)], [1, 1])
        self.check_version(job, 1)
        # Version 1 -> 2: one fresh delta completes the buffer of two stale ones.
        self.assertEqual(self.push(job, 1), 1)
        self.check_version(job, 2)
        # Version 2 -> 3: staleness 2 (the most allowed), 0 and 1.
        self.assertEqual([self.push(job, v) for v in (0, 2, 1)], [2, 2, 2])
        st = self.check_version(job, 3)
        self.assertEqual(st["history"][2]["staleness"], {"mean": 1.0, "max": 2})
        self.assertEqual(st["history"][0]["staleness"], {"mean": 0.0, "max": 0})
        # Too stale, and from a version not yet published: refused, nothing counted.
        with self.assertRaises(LiflError) as e:
            self.push(job, 0)
        self.assertEqual((e.exception.status, e.exception.code), (409, "stale_update"))
        with self.assertRaises(LiflError) as e:
            self.push(job, 4)
        self.assertEqual((e.exception.status, e.exception.code), (409, "wrong_round"))
        self.assertEqual(self.client.job(job)["received"], 0)
        # A fast client may land two updates in one buffer (distinct ce-ids); a retry of one
        # (same ce-id) is counted once.
        self.assertEqual([self.push(job, v, client="fast") for v in (3, 1)], [3, 3])
        tensors, _ = random_update(self.rng)
        retry = self.client.push(job, tensors, client="fast", num_examples=1, round_=1,
                                 ce_id=self.last_id)
        self.assertEqual(retry["round"], 3)
        self.assertEqual(self.client.job(job)["received"], 2)
        self.assertEqual(self.push(job, 2), 3)
        st = self.check_version(job, 4)
        self.assertEqual(st["state"], "done")
        metrics = self.platform.metrics()
        self.assertIn('lifl_update_staleness_count{job="buff"} 12', metrics)
        total = sum(tau for buf in self.buffers.values() for _, tau, _ in buf)
        self.assertEqual(total, 8)
        self.assertIn(f'lifl_update_staleness_sum{{job="buff"}} {total}', metrics)
        self.assertEqual([h["clients"] for h in st["history"]], [K] * 4)

    def test_staleness_weight_is_not_an_average(self):
        # A buffer of deltas all one version behind steps by 1/sqrt(2) of the fresh step
        # (FedBuff divides by the examples, not by the staleness weights).
        job = "scaled"
        self.client.create_job(job_spec(job, clients=2, rounds=2, fan_in=2, update="delta",
                                        strategy={"name": "fedbuff", "server_learning_rate": RATE}))
        ones = {k: np.ones(s, np.float32) for k, s in MODEL.items()}
        self.client.push(job, ones, client="a", num_examples=1, round_=0)
        self.client.push(job, ones, client="b", num_examples=3, round_=0)
        self.client.wait_round(job, 1, timeout=30)
        self.client.push(job, ones, client="a", num_examples=1, round_=0)
        self.client.push(job, ones, client="b", num_examples=1, round_=0)
        self.client.wait_round(job, 2, timeout=30)
        got, _ = self.client.pull(job)
        expected = RATE * (1 + 1 / math.sqrt(2))
        for k in MODEL:
            np.testing.assert_allclose(got[k], expected, rtol=1e-6)

    def test_a_killed_leaf_keeps_the_staleness_of_its_updates(self):
        # The staleness travels in the update's store object: a leaf killed with stale updates
        # in its accumulator is replaced, the updates are re-delivered and weighed the same.
        job = "killed"
        k = 12
        self.client.create_job(job_spec(job, clients=k, rounds=2, update="delta",
                                        hierarchy={"fan_in": 4, "batch": 4, "levels": 2},
                                        strategy={"name": "fedbuff",
                                                  "server_learning_rate": RATE}))
        for _ in range(k):
            self.push(job, 0)
        self.check_version(job, 1)
        for i in range(k):
            if i == 5:  # the second leaf slot holds one update, not yet sealed in a partial
                plan = self.client.job(job)["plan"]
                running = [p for p in plan["instances"][:plan["leaves"]] if p][-2:]
                for victim in running:
                    os.kill(self.platform.pid_of(victim), signal.SIGKILL)
            self.assertEqual(self.push(job, i % 2), 1)
        st = self.check_version(job, 2)
        self.assertGreaterEqual(st["recoveries"], 1)
        self.assertEqual(st["history"][1]["clients"], k)
        self.assertEqual(st["history"][1]["staleness"], {"mean": 0.5, "max": 1})

    def test_bad_specs_are_refused(self):
        bad = [
            ({"name": "fedbuff"}, "weights"),                          # needs deltas
            ({"name": "fedbuff", "max_staleness": -1}, "delta"),
            ({"name": "fedbuff", "max_staleness": 1.5}, "delta"),
            ({"name": "fedbuff", "server_learning_rate": 0}, "delta"),
            ({"name": "fedbuff", "buffer": 4}, "delta"),               # unknown parameter
        ]
        for i, (strategy, update) in enumerate(bad):
            with self.assertRaises(LiflError, msg=str(strategy)) as e:
                self.client.create_job(job_spec(f"bad{i}", clients=2, update=update,
                                                strategy=strategy))
            self.assertEqual((e.exception.status, e.exception.code), (422, "invalid_job_spec"))
        self.assertEqual(self.client._request("GET", "/v1/jobs")[2], b"[]")


if __name__ == "__main__":
    unittest.main()
