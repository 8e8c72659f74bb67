"""Round deadlines and stragglers: a round closes at its deadline with at least min_clients
updates (exactly the FedAvg of those), fails with a reason below it, and late updates are
dropped or folded into the next round as the job says. No round hangs."""
import json
import time
import unittest
import urllib.request

import numpy as np

from lifl_client import LiflError
from lifl_harness import PlatformTestCase, assert_model_equal, fedavg, job_spec, random_update


class Deadlines(PlatformTestCase):
    def push_many(self, job, rng, clients, round_, prefix="c"):
        pushed = []
        for c in clients:
            tensors, exact = random_update(rng)
            n = int(rng.integers(1, 100))
            self.client.push(job, tensors, client=f"{prefix}{c}", num_examples=n, round_=round_)
            pushed.append((n, exact))
        return pushed

    def test_closes_at_deadline_with_min_clients(self):
        for levels, fan_in, clients, pushed_n in ((2, 4, 10, 7), (3, 3, 20, 11), (1, 8, 9, 4)):
            job = f"dl{levels}"
            with self.subTest(levels=levels):
                self.client.create_job(job_spec(job, clients=clients, rounds=2, min_clients=pushed_n - 2,
                                                deadline_seconds=1.5,
                                                hierarchy={"fan_in": fan_in, "levels": levels}))
                rng = np.random.default_rng(levels)
                t0 = time.monotonic()
                updates = self.push_many(job, rng, range(pushed_n), 0)
                status = self.client.wait_round(job, 1, timeout=15)
                self.assertGreaterEqual(time.monotonic() - t0, 1.0, "closed by the deadline, not before")
                self.assertEqual(status["history"][0]["clients"], pushed_n)
                self.assertEqual(status["history"][0]["closed"], "deadline")
                model, r = self.client.pull(job)
                self.assertEqual(r, 1)
                assert_model_equal(self, model, fedavg(updates))
                # The next round completes normally with all its clients.
                updates = self.push_many(job, rng, range(clients), 1)
                status = self.client.wait_round(job, 2, timeout=15)
                self.assertEqual(status["history"][1]["closed"], "complete")
                model, _ = self.client.pull(job)
                assert_model_equal(self, model, fedavg(updates))

    def test_late_updates_dropped(self):
        self.client.create_job(job_spec("drop", clients=6, rounds=2, min_clients=2, deadline_seconds=1.0))
        rng = np.random.default_rng(1)
        self.push_many("drop", rng, range(2), 0)
        tensors, _ = random_update(rng)
        self.client.push("drop", tensors, client="c2", num_examples=5, round_=0, ce_id="kept")
        self.client.wait_round("drop", 1, timeout=10)
        # A client retrying an update that its closed round accepted gets 202 again, counted once.
        reply = self.client.push("drop", tensors, client="c2", num_examples=5, round_=0, ce_id="kept")
        self.assertEqual(reply, {"accepted": True, "round": 0, "duplicate": True})
        with self.assertRaises(LiflError) as ctx:
            self.client.push("drop", random_update(rng)[0], client="straggler", round_=0)
        self.assertEqual((ctx.exception.status, ctx.exception.code), (409, "late_update"))
        self.assertEqual(self.client.job("drop")["late"]["dropped"], 1)

    def test_late_updates_folded_into_next_round(self):
        self.client.create_job(job_spec("fold", clients=6, rounds=2, min_clients=3, deadline_seconds=1.0,
                                        late="next_round"))
        rng = np.random.default_rng(2)
        self.push_many("fold", rng, range(4), 0)
        self.client.wait_round("fold", 1, timeout=10)
        tensors, exact = random_update(rng)
        reply = self.client.push("fold", tensors, client="straggler", num_examples=17, round_=0)
        self.assertEqual(reply, {"accepted": True, "round": 1})
        updates = [(17, exact)] + self.push_many("fold", rng, range(5), 1, prefix="r1-")
        status = self.client.wait_round("fold", 2, timeout=10)
        self.assertEqual(status["history"][1]["clients"], 6)
        self.assertEqual(status["late"]["folded"], 1)
        model, _ = self.client.pull("fold")
        assert_model_equal(self, model, fedavg(updates))

    def test_round_fails_below_min_clients(self):
        self.client.create_job(job_spec("fails", clients=5, rounds=1, min_clients=3, deadline_seconds=0.8))
        rng = np.random.default_rng(3)
        self.push_many("fails", rng, range(2), 0)
        deadline = time.monotonic() + 10
        while self.client.job("fails")["state"] != "failed":
            self.assertLess(time.monotonic(), deadline, "the round hung instead of failing")
            time.sleep(0.05)
        status = self.client.job("fails")
        self.assertIn("2 of the 3 updates", status["failure"])
        deadline = time.monotonic() + 10
        while True:  # what the aggregators held is freed; the failed job's model went to its checkpoint
            with urllib.request.urlopen(self.platform.url + "/v1/store") as r:
                kinds = [o["kind"] for o in json.loads(r.read())["objects"] if o["kind"] != "counter"]
            if not kinds:
                break
            self.assertLess(time.monotonic(), deadline, f"objects left: {kinds}")
            time.sleep(0.05)
        model, model_round = self.client.pull("fails")  # still served, from the checkpoint
        self.assertEqual(model_round, 0)

    def test_empty_round_fails_with_a_reason(self):
        self.client.create_job(job_spec("empty", clients=4, rounds=1, min_clients=1, deadline_seconds=0.5))
        deadline = time.monotonic() + 10
        while self.client.job("empty")["state"] != "failed":
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        self.assertIn("0 of the 1 updates", self.client.job("empty")["failure"])


if __name__ == "__main__":
    unittest.main()
