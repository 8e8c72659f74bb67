"""kill -9 of aggregators in the middle of a round: the round still completes and every
accepted update is counted exactly once (checked against numpy). Randomised; the seed is
printed so a failing trial can be replayed with LIFL_FAULT_SEED."""
import os
import random
import signal
import threading
import time
import unittest

import numpy as np

from lifl_client import Client
from lifl_harness import (PlatformTestCase, assert_model_equal, dpdk_missing, fedavg, job_spec,
                          random_update)

CLIENTS = 40


class KillAggregators(PlatformTestCase):
    router = "ebpf"
    warm_pool = 6

    def trial(self, job, rng, victim_role, kill_after, batch, fan_in=None, middle=None):
        levels = 3 if victim_role == "middle" else 2
        fan_in = fan_in or (4 if levels == 3 else 8)
        self.client.create_job(job_spec(job, clients=CLIENTS, rounds=1,
                                        hierarchy={"fan_in": fan_in, "batch": batch, "levels": levels}))
        def victims():
            # Leaf slots get a process as updates reach them and give it back when done. The
            # last slot with one is the slot being filled or the next: not done, so its kill
            # is always recovered. The one before may finish, and go back to the pool, just
            # before the kill lands; it is killed too in "two-leaves".
            plan = self.client.job(job)["plan"]
            leaves, middles, instances = plan["leaves"], plan["middles"], plan["instances"]
            running = [i for i in instances[:leaves] if i][-2:]
            return {"leaf": lambda: running[-1:],
                    "two-leaves": lambda: running,
                    "middle": lambda: [instances[leaves + (middle if middle is not None
                                                            else rng.randrange(middles))]],
                    "top": lambda: [instances[-1]]}[victim_role]()
        data_rng = np.random.default_rng(rng.randrange(1 << 30))
        updates = [random_update(data_rng) for _ in range(CLIENTS)]
        weights = [int(data_rng.integers(1, 300)) for _ in range(CLIENTS)]
        pushed = threading.Event()
        errors = []
        accepted = []

        pushes = Client(self.platform.url)  # its own: a stuck pusher holds no other trial's

        def pusher():
            try:
                for c in range(CLIENTS):
                    if c == kill_after:
                        pushed.set()
                        time.sleep(0.01)
                    pushes.push(job, updates[c][0], client=f"k{c}", num_examples=weights[c], round_=0)
                    accepted.append(c)
            except Exception as e:  # reported below
                errors.append(e)
            pushed.set()

        t = threading.Thread(target=pusher, daemon=True)  # a stuck one must not hold the exit
        t.start()
        self.assertTrue(pushed.wait(30))
        for v in victims():
            os.kill(self.platform.pid_of(v), signal.SIGKILL)
        t.join(60)
        if t.is_alive():
            job_now = self.client.job(job)
            self.fail(f"the pusher is stuck after {len(accepted)} of {CLIENTS} updates, killed "
                      f"after {kill_after}: the job is {job_now}")
        self.assertEqual(errors, [], "every update must be accepted despite the kill")
        status = self.client.wait_round(job, 1, timeout=60)
        self.assertEqual(status["state"], "done", status)
        self.assertEqual(status["history"][0]["clients"], CLIENTS, "each update counted exactly once")
        self.assertGreaterEqual(status["recoveries"], 1)
        model, _ = self.client.pull(job)
        assert_model_equal(self, model, fedavg([(weights[c], updates[c][1]) for c in range(CLIENTS)]))

    def test_kill_top_late_in_the_round(self):
        # Batches of 2: by update 30 the top has folded about 14 partials; its replacement
        # must rebuild the sum from everything the top held.
        self.trial("ckpt", random.Random(5), "top", kill_after=30, batch=2)

    def test_kill_middle_late_in_the_round(self):
        # Fan-in 8 over 40 clients: one middle with 5 leaves, killed after update 36 when it
        # has folded most of them.
        self.trial("mckpt", random.Random(6), "middle", kill_after=36, batch=0, fan_in=8)

    def test_kill_middle_after_its_parent_checkpointed(self):
        # Fan-in 4, batches of 3 at every level: the first middle's leaves send partials of
        # 3 and 1 clients, and it forwards every 3 of those. By update 14 it has forwarded
        # two (clients 0-11), and the top has checkpointed them and released them. Killed
        # then, its clients inside the top's checkpoint are found by key: its replacement
        # waits only for clients 12-15 and forwards them (counting 16 it would wait forever
        # after the 2 partials of its last leaf, fewer than a batch).
        self.trial("tckpt", random.Random(8), "middle", kill_after=14, batch=3, middle=0)

    def test_kill_leaves_mid_round(self):
        seed = int(os.environ.get("LIFL_FAULT_SEED", random.randrange(1 << 30)))
        print(f"\nfault seed {seed} (router {self.router})")
        rng = random.Random(seed)
        roles = ["leaf"] * 4 + ["two-leaves"] * 2 + ["middle"] * 2 + ["top"] * 2
        for i, role in enumerate(roles):
            with self.subTest(trial=i, role=role):
                self.trial(f"kill{i}", rng, role, kill_after=rng.randrange(1, CLIENTS - 1),
                           batch=rng.choice([0, 2, 3]))

    def test_store_is_clean_after_recovery(self):
        rng = random.Random(7)
        self.trial("clean", rng, "leaf", kill_after=17, batch=2)
        # Everything (but each instance's processed counter) is released: the job is done, so
        # even its model has left the store for its checkpoint.
        import urllib.request, json
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(self.platform.url + "/v1/store") as r:
                objects = [o for o in json.loads(r.read())["objects"] if o["kind"] != "counter"]
            if not objects:
                break
            if time.monotonic() > deadline:
                self.fail(f"objects leaked: {json.dumps(objects, indent=1)}")
            time.sleep(0.05)


class KillAggregatorsUserspace(KillAggregators):
    router = "userspace"


@unittest.skipIf(dpdk_missing(), dpdk_missing())
class KillAggregatorsDpdk(KillAggregators):
    router = "dpdk"


if __name__ == "__main__":
    unittest.main()
