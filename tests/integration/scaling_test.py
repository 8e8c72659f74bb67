"""Scaling: an idle job gives its aggregators back (scale to zero), the warm pool keeps only
its target of idle instances (scale down), and the next update brings a tree back; cold
starts are counted."""
import re
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
        self.assertEqual(len(self.client.job("idle")["plan"]["instances"]), 4)  # 3 leaves + top
        metrics = self.platform.metrics()
        cold = float(re.search(r"^lifl_cold_starts_total (\S+)", metrics, re.M).group(1))
        self.assertGreaterEqual(cold, 2, "4 aggregators from a warm pool of 2")

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


if __name__ == "__main__":
    unittest.main()
