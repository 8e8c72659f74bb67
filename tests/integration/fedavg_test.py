"""Exact streaming hierarchical FedAvg through real processes: `lifl up`, 50 clients pushing
updates with random ce-numexamples over HTTP, the global model compared with numpy."""
import re
import unittest

import numpy as np

from lifl_harness import (MODEL, PlatformTestCase, assert_model_equal, dpdk_missing, fedavg, job_spec,
                          random_update)


class FedAvgEbpf(PlatformTestCase):
    router = "ebpf"

    def run_rounds(self, job_id, rounds=3, clients=50, seed=0, dtypes=("F32",), **spec_extra):
        self.client.create_job(job_spec(job_id, clients=clients, rounds=rounds, **spec_extra))
        rng = np.random.default_rng(seed)
        for r in range(rounds):
            updates = []
            for c in range(clients):
                dtype = dtypes[c % len(dtypes)]
                tensors, exact = random_update(rng, dtype=dtype)
                n = int(rng.integers(1, 500))
                reply = self.client.push(job_id, tensors, client=f"c{c}", num_examples=n, round_=r, dtype=dtype)
                self.assertEqual(reply, {"accepted": True, "round": r})
                updates.append((n, exact))
            status = self.client.wait_round(job_id, r + 1, timeout=60)
            self.assertEqual(status["round"], r + 1, status)
            model, model_round = self.client.pull(job_id)
            self.assertEqual(model_round, r + 1)
            assert_model_equal(self, model, fedavg(updates))
        return self.client.job(job_id)

    def test_three_rounds_exact(self):
        status = self.run_rounds("fedavg3")
        self.assertEqual(status["state"], "done")
        self.assertEqual([h["clients"] for h in status["history"]], [50, 50, 50])
        self.assertGreaterEqual(status["plan"]["leaves"], 7)  # at most fan-in 8 updates per leaf
        self.assertGreater(status["plan"]["sized_from"]["leaf_throughput"], 0, "measured by the leaves")
        self.assertGreater(status["plan"]["sized_from"]["arrival_rate"], 0)

    def test_f16_and_bf16_updates_are_widened(self):
        self.run_rounds("mixed", rounds=1, clients=12, seed=1, dtypes=("F32", "F16", "BF16"))

    def test_three_levels_with_batches(self):
        status = self.run_rounds("deep", rounds=2, clients=30, seed=2, fan_in=3,
                                 hierarchy={"fan_in": 3, "levels": 3, "batch": 2})
        self.assertGreater(status["plan"]["middles"], 0)

    def test_single_buffered_aggregator(self):
        # The baseline of bench_round: one aggregator, every update held, averaged at the end.
        status = self.run_rounds("single", rounds=2, clients=20, seed=5,
                                 hierarchy={"fan_in": 8, "levels": 1, "eager": False})
        self.assertEqual(len(status["plan"]["nodes"]), 1)
        self.assertEqual(status["plan"]["nodes"][0]["role"], "top")

    def test_delta_updates(self):
        spec = job_spec("delta", clients=10, rounds=2, update="delta")
        del spec["model"]["init"]
        self.client.create_job(spec)
        rng = np.random.default_rng(3)
        base = {n: rng.standard_normal(s).astype(np.float32) for n, s in MODEL.items()}
        self.client.set_model("delta", base)
        model, r0 = self.client.pull("delta")
        self.assertEqual(r0, 0)
        assert_model_equal(self, model, {k: v.astype(np.float64) for k, v in base.items()}, rtol=0)
        current = {k: v.astype(np.float64) for k, v in base.items()}
        for r in range(2):
            updates = []
            for c in range(10):
                tensors, exact = random_update(rng)
                n = int(rng.integers(1, 50))
                self.client.push("delta", tensors, client=f"d{c}", num_examples=n, round_=r)
                updates.append((n, exact))
            self.client.wait_round("delta", r + 1)
            mean = fedavg(updates)
            current = {k: current[k] + mean[k] for k in current}
            model, _ = self.client.pull("delta")
            assert_model_equal(self, model, current)

    def test_metrics_count_updates_and_routed_descriptors(self):
        self.run_rounds("metered", rounds=1, clients=9, seed=4)
        text = self.platform.metrics()
        accepted = re.search(r'lifl_updates_accepted_total\{job="metered"\} (\d+)', text)
        self.assertIsNotNone(accepted, text[:2000])
        self.assertEqual(int(accepted.group(1)), 9)
        delivered = [float(v) for v in re.findall(r'lifl_router_delivered_messages_total\{instance="\d+"\} ([0-9.e+]+)', text)]
        # 9 updates + 2 partials (2 leaves) + 2 acks + 1 model, plus assignments.
        self.assertGreaterEqual(sum(delivered), 14, "router counters must count real deliveries")
        self.assertIn("lifl_round_duration_seconds", text)


    def test_cancel_mid_round_frees_everything(self):
        self.client.create_job(job_spec("cancelled", clients=20, rounds=2))
        rng = np.random.default_rng(9)
        for c in range(11):
            self.client.push("cancelled", random_update(rng)[0], client=f"x{c}", num_examples=2, round_=0)
        status, _, _ = self.client._request("DELETE", "/v1/jobs/cancelled")
        self.assertEqual(status, 204)
        self.assertEqual(self.client.job("cancelled")["state"], "cancelled")
        import time, json, urllib.request
        deadline = time.monotonic() + 10
        while True:  # nothing of the job is left in the store: even its model is in its checkpoint
            with urllib.request.urlopen(self.platform.url + "/v1/store") as r:
                objects = [o for o in json.loads(r.read())["objects"] if o["kind"] != "counter"]
            if not objects:
                break
            self.assertLess(time.monotonic(), deadline, f"objects left after cancel: {objects}")
            time.sleep(0.05)
        model, model_round = self.client.pull("cancelled")  # served from the checkpoint
        self.assertEqual(model_round, 0)
        self.assertTrue(all(not np.any(t) for t in model.values()))  # init: zeros
        with self.assertRaises(Exception):
            self.client.push("cancelled", random_update(rng)[0], client="late", round_=0)


class FedAvgUserspace(FedAvgEbpf):
    router = "userspace"


@unittest.skipIf(dpdk_missing(), dpdk_missing())
class FedAvgDpdk(FedAvgEbpf):
    router = "dpdk"


if __name__ == "__main__":
    unittest.main()
