"""Server optimisers (fedavgm, fedadam, fedyogi, fedadagrad) through the real platform, over
several rounds, against an independent numpy implementation of each update rule written
here (docs/strategies.md; Flower's rules and defaults). fedprox aggregates as fedavg and hands
its proximal term to the clients. Bad strategy specs are refused and disturb nothing.

Tolerance: the platform runs the step in fp32 from an fp32 sum; the reference runs in
float64. Over 3 rounds the adaptive steps divide by sqrt(v) + tau with v of order 1, so the
relative error stays near 1e-6; 1e-4 of the tensor's largest magnitude is asserted (a wrong
rule, a lost update or state lost between rounds moves values by more than 1e-2)."""
import os
import signal
import unittest

import numpy as np

from lifl_client import LiflError
from lifl_harness import MODEL, PlatformTestCase, assert_model_equal, job_spec, random_update

CLIENTS = 12
ROUNDS = 3
RTOL = 1e-4


def reference(strategy, rounds_updates, delta):
    """x_{t+1} from x_t and the round's weighted mean, as Flower's strategies compute it."""
    name = strategy["name"]
    eta, b1, b2, tau = (strategy.get(k, d) for k, d in
                        (("eta", 0.1), ("beta_1", 0.9), ("beta_2", 0.99), ("tau", 1e-9)))
    if name == "fedadagrad":
        b1 = 0.0
    lr, mom = strategy.get("server_learning_rate", 1.0), strategy.get("server_momentum", 0.0)
    x = {k: np.zeros(s) for k, s in MODEL.items()}
    m = v = None
    models = []
    for updates in rounds_updates:
        total = sum(n for n, _ in updates)
        mean = {k: sum(n * u[k] for n, u in updates) / total for k in x}
        if name == "fedavgm":
            g = {k: (-mean[k] if delta else x[k] - mean[k]) for k in x}
            m = {k: (mom * m[k] + g[k] if (m is not None and mom > 0) else g[k]) for k in x}
            x = {k: x[k] - lr * m[k] for k in x}
        else:
            d = {k: (mean[k] if delta else mean[k] - x[k]) for k in x}
            m0 = m or {k: np.zeros_like(x[k]) for k in x}
            v0 = v or {k: np.zeros_like(x[k]) for k in x}
            m = {k: b1 * m0[k] + (1 - b1) * d[k] for k in x}
            if name == "fedadam":
                v = {k: b2 * v0[k] + (1 - b2) * d[k] ** 2 for k in x}
            elif name == "fedyogi":
                v = {k: v0[k] - (1 - b2) * d[k] ** 2 * np.sign(v0[k] - d[k] ** 2) for k in x}
            else:
                v = {k: v0[k] + d[k] ** 2 for k in x}
            x = {k: x[k] + eta * m[k] / (np.sqrt(v[k]) + tau) for k in x}
        models.append(x)
    return models


def run_strategy(test, job, strategy, delta=False, seed=1):
    """Runs ROUNDS rounds of `strategy` and checks each round's model against reference()."""
    spec = job_spec(job, clients=CLIENTS, rounds=ROUNDS, fan_in=4, strategy=strategy,
                    update="delta" if delta else "weights")
    test.client.create_job(spec)
    test.assertEqual(test.client.job(job)["spec"]["strategy"]["name"], strategy["name"])
    rng = np.random.default_rng(seed)
    rounds_updates = []
    for r in range(ROUNDS):
        updates = []
        for c in range(CLIENTS):
            tensors, exact = random_update(rng)
            n = int(rng.integers(1, 100))
            test.client.push(job, tensors, client=f"c{c}", num_examples=n, round_=r)
            updates.append((n, exact))
        rounds_updates.append(updates)
        test.client.wait_round(job, r + 1, timeout=30)
        got, _ = test.client.pull(job)
        expected = reference(strategy, rounds_updates, delta)[r]
        assert_model_equal(test, got, expected, rtol=RTOL)
    return expected


class ServerOptimisers(PlatformTestCase):
    run_strategy = run_strategy

    def test_fedadam(self):
        self.run_strategy("adam", {"name": "fedadam"})

    def test_fedadam_with_delta_updates(self):
        self.run_strategy("adamd", {"name": "fedadam", "eta": 0.05, "beta_1": 0.5}, delta=True)

    def test_fedyogi(self):
        self.run_strategy("yogi", {"name": "fedyogi", "eta": 0.2, "beta_2": 0.9})

    def test_fedadagrad(self):
        self.run_strategy("adagrad", {"name": "fedadagrad", "tau": 1e-3})

    def test_fedavgm(self):
        self.run_strategy("avgm", {"name": "fedavgm", "server_momentum": 0.9,
                                   "server_learning_rate": 0.7})

    def test_the_state_is_not_served(self):
        # The model pulled is the tensors only, whatever the optimiser keeps beside them.
        self.run_strategy("served", {"name": "fedadam"})
        got, _ = self.client.pull("served")
        self.assertEqual({k: v.shape for k, v in got.items()}, {k: tuple(s) for k, s in MODEL.items()})


class OptimiserStateSurvivesRestart(unittest.TestCase):
    def test_fedadam_resumes_with_its_moments(self):
        import os
        import tempfile
        import time
        from lifl_harness import Platform
        strategy = {"name": "fedadam"}
        rng = np.random.default_rng(41)
        rounds_updates = []
        elements = sum(int(np.prod(s)) for s in MODEL.values())

        def play(platform, r):
            updates = []
            for c in range(CLIENTS):
                tensors, exact = random_update(rng)
                platform.client.push("durable", tensors, client=f"c{c}", num_examples=c + 1, round_=r)
                updates.append((c + 1, exact))
            rounds_updates.append(updates)
            platform.client.wait_round("durable", r + 1, timeout=30)
            model, _ = platform.client.pull("durable")
            assert_model_equal(self, model, reference(strategy, rounds_updates, False)[r], rtol=RTOL)

        with tempfile.TemporaryDirectory(prefix="lifl-adam-") as data:
            first = Platform(data_dir=data)
            try:
                first.client.create_job(job_spec("durable", clients=CLIENTS, rounds=3, fan_in=4,
                                                 strategy=strategy))
                play(first, 0)
                play(first, 1)
                # The round's checkpoint holds the tensors and both moments (written just
                # after the round completes).
                path = os.path.join(data, "jobs", "durable", "model-2.safetensors")
                deadline = time.monotonic() + 10
                while not (os.path.exists(path) and os.path.getsize(path) > 3 * 4 * elements):
                    self.assertLess(time.monotonic(), deadline, "no checkpoint with the state")
                    time.sleep(0.05)
            finally:
                first.stop()
            second = Platform(data_dir=data)
            try:
                self.assertEqual(second.client.job("durable")["round"], 2)
                play(second, 2)  # wrong if m and v had restarted from zero
            finally:
                second.stop()


class ModelDtypes(PlatformTestCase):
    def test_model_served_in_bf16(self):
        run_strategy(self, "bf", {"name": "fedadam"})
        f32, round_ = self.client.pull("bf")
        bf16, round16 = self.client.pull("bf", dtype="bf16")
        self.assertEqual(round16, round_)
        for name, x in f32.items():
            # Each value must be the BF16 number nearest to the F32 one (ties to even):
            # checked against both neighbours, the truncation and the next one up.
            bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
            lo = ((bits >> 16) << 16).astype(np.uint32).view(np.float32).astype(np.float64)
            hi = (((bits >> 16) + 1) << 16).astype(np.uint32).view(np.float32).astype(np.float64)
            xd = x.astype(np.float64)
            nearest = np.where(np.abs(xd - lo) < np.abs(hi - xd), lo,
                               np.where(np.abs(xd - lo) > np.abs(hi - xd), hi,
                                        np.where(((bits >> 16) & 1) == 0, lo, hi)))
            np.testing.assert_array_equal(bf16[name].astype(np.float64), nearest, err_msg=name)
        with self.assertRaises(LiflError) as e:
            self.client.pull("bf", dtype="int4")
        self.assertEqual((e.exception.status, e.exception.code), (400, "bad_dtype"))


class RobustStrategies(PlatformTestCase):
    """Coordinate-wise median and trimmed mean over every update of a round, at one
    aggregator, against numpy; unweighted, as Flower's FedMedian and FedTrimmedAvg."""

    def run_robust(self, job, strategy, reduce, delta=False, clients=11, rounds=2):
        spec = job_spec(job, clients=clients, rounds=rounds, strategy=strategy,
                        update="delta" if delta else "weights")
        self.client.create_job(spec)
        self.assertEqual(self.client.job(job)["plan"]["levels"], 1)
        rng = np.random.default_rng(21)
        x = {k: np.zeros(s) for k, s in MODEL.items()}
        for r in range(rounds):
            updates = []
            for c in range(clients):
                tensors, exact = random_update(rng, dtype="F16" if c % 4 == 0 else "F32")
                if c == 0:  # an outlier the robust rules must not follow
                    tensors = {k: (v * 1000).astype(np.float16) for k, v in tensors.items()}
                    exact = {k: v.astype(np.float64) for k, v in tensors.items()}
                self.client.push(job, tensors, client=f"c{c}", num_examples=c + 1, round_=r,
                                 dtype="F16" if c % 4 == 0 else "F32")
                updates.append(exact)
            stacked = {k: np.stack([u[k] for u in updates]) for k in MODEL}
            agg = {k: reduce(v) for k, v in stacked.items()}
            x = {k: (x[k] + agg[k] if delta else agg[k]) for k in MODEL}
            self.client.wait_round(job, r + 1, timeout=30)
            model, _ = self.client.pull(job)
            assert_model_equal(self, model, x)

    def test_median(self):
        self.run_robust("med", {"name": "median"}, lambda v: np.median(v, axis=0))

    def test_median_of_an_even_count_with_deltas(self):
        self.run_robust("med2", {"name": "median"}, lambda v: np.median(v, axis=0), delta=True,
                        clients=10)

    def test_trimmed_mean(self):
        def trimmed(v, beta=0.2):
            cut = int(beta * v.shape[0])
            return np.sort(v, axis=0)[cut:v.shape[0] - cut].mean(axis=0)
        self.run_robust("trim", {"name": "trimmed_mean", "beta": 0.2}, trimmed)


class PerLeafRobust(PlatformTestCase):
    """The per-leaf approximation the job asks for (`per_leaf: true`): each leaf applies the
    rule to the updates of its slot, in arrival order, and the model is the mean of the
    leaves' results weighted by their update counts (docs/strategies.md)."""

    def run_per_leaf(self, job, strategy, rule, clients=12, fan_in=4, delta=False):
        spec = job_spec(job, clients=clients, rounds=2, fan_in=fan_in,
                        strategy=dict(strategy, per_leaf=True),
                        update="delta" if delta else "weights")
        self.client.create_job(spec)
        st = self.client.job(job)
        self.assertIs(st["spec"]["strategy"]["per_leaf"], True)
        self.assertGreaterEqual(st["plan"]["levels"], 2)
        rng = np.random.default_rng(51)
        x = {k: np.zeros(s) for k, s in MODEL.items()}
        for r in range(2):
            plan = self.client.job(job)["plan"]
            slots = [n["expected"] for n in plan["nodes"][:plan["leaves"]]]
            self.assertEqual(sum(slots), clients)
            updates, weights = [], []
            for c in range(clients):
                tensors, exact = random_update(rng)
                if c % 5 == 0:  # an outlier in most leaves
                    tensors = {k: (v * 1000).astype(np.float32) for k, v in tensors.items()}
                    exact = {k: v.astype(np.float64) for k, v in tensors.items()}
                self.client.push(job, tensors, client=f"c{c}", num_examples=c + 1, round_=r)
                updates.append(exact)
                weights.append(c + 1)
            results, counts, at = [], [], 0
            for m in slots:  # the leaves' slots, filled in arrival order
                results.append(rule(updates[at:at + m], weights[at:at + m]))
                counts.append(m)
                at += m
            agg = {k: sum(m * res[k] for m, res in zip(counts, results)) / sum(counts) for k in MODEL}
            x = {k: (x[k] + agg[k] if delta else agg[k]) for k in MODEL}
            self.client.wait_round(job, r + 1, timeout=30)
            model, _ = self.client.pull(job)
            assert_model_equal(self, model, x)

    def test_a_slow_leaf_keeps_its_whole_slot(self):
        # A leaf that falls behind hands the rest of its slot to a new leaf (scale-up), which
        # is exact for the mean but not for a rule applied per slot: the slot's median would
        # become two medians. Every instance is stopped (SIGSTOP) while the first slot's
        # updates are routed, so that its leaf is behind; the round must still be the
        # reference's, slot by slot.
        clients, fan_in = 10, 5
        self.client.create_job(job_spec("pslow", clients=clients, rounds=1, fan_in=fan_in,
                                        strategy={"name": "median", "per_leaf": True}))
        rng = np.random.default_rng(53)
        pushes = [random_update(rng) for _ in range(clients)]
        stopped = [i["pid"] for i in self.platform.instances()]
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            for c in range(fan_in):
                self.client.push("pslow", pushes[c][0], client=f"c{c}", num_examples=1, round_=0)
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        for c in range(fan_in, clients):
            self.client.push("pslow", pushes[c][0], client=f"c{c}", num_examples=1, round_=0)
        self.client.wait_round("pslow", 1, timeout=30)
        model, _ = self.client.pull("pslow")
        slots = [[p[1] for p in pushes[:fan_in]], [p[1] for p in pushes[fan_in:]]]
        medians = [{k: np.median(np.stack([u[k] for u in slot]), axis=0) for k in MODEL} for slot in slots]
        assert_model_equal(self, model, {k: (medians[0][k] + medians[1][k]) / 2 for k in MODEL})
        self.assertNotIn("takes the rest of its slot", self.platform.log_tail(200))

    def test_median_per_leaf(self):
        self.run_per_leaf("pmed", {"name": "median"},
                          lambda u, w: {k: np.median(np.stack([x[k] for x in u]), axis=0) for k in MODEL})

    def test_trimmed_mean_per_leaf_with_deltas(self):
        def trimmed(u, w, beta=0.25):
            out = {}
            for k in MODEL:
                v = np.sort(np.stack([x[k] for x in u]), axis=0)
                cut = int(beta * v.shape[0])
                out[k] = v[cut:v.shape[0] - cut].mean(axis=0)
            return out
        self.run_per_leaf("ptrim", {"name": "trimmed_mean", "beta": 0.25}, trimmed, delta=True)

    def test_multikrum_per_leaf(self):
        self.run_per_leaf("pkrum", {"name": "multikrum", "num_malicious_clients": 1,
                                    "num_clients_to_keep": 2},
                          lambda u, w: krum_reference(u, w, 1, 2), clients=15, fan_in=5)


def krum_reference(updates, weights, f, keep):
    """Flower's Krum: squared L2 distances between flattened updates; each one's score sums
    its n - f - 2 nearest (at least 1); keep the `keep` best (stable order) and take their
    examples-weighted mean."""
    flat = [np.concatenate([u[k].ravel() for k in MODEL]) for u in updates]
    n = len(flat)
    dist = np.array([[np.sum((a - b) ** 2) for b in flat] for a in flat])
    closest = max(1, n - f - 2)
    scores = [np.sum(np.sort(np.delete(dist[i], i))[:closest]) for i in range(n)]
    best = np.argsort(scores, kind="stable")[:keep]
    total = sum(weights[i] for i in best)
    return {k: sum(weights[i] * updates[i][k] for i in best) / total for k in MODEL}


class KrumStrategies(PlatformTestCase):
    def run_krum(self, job, strategy, f, keep, clients=11):
        self.client.create_job(job_spec(job, clients=clients, rounds=2, strategy=strategy))
        rng = np.random.default_rng(31)
        for r in range(2):
            updates, weights = [], []
            for c in range(clients):
                tensors, exact = random_update(rng)
                if c in (2, 7):  # two Byzantine clients, far from the others
                    tensors = {k: (v * 50 + 30).astype(np.float32) for k, v in tensors.items()}
                    exact = {k: v.astype(np.float64) for k, v in tensors.items()}
                self.client.push(job, tensors, client=f"c{c}", num_examples=c + 1, round_=r)
                updates.append(exact)
                weights.append(c + 1)
            self.client.wait_round(job, r + 1, timeout=30)
            model, _ = self.client.pull(job)
            assert_model_equal(self, model, krum_reference(updates, weights, f, keep))

    def test_krum(self):
        self.run_krum("krum", {"name": "krum", "num_malicious_clients": 2}, f=2, keep=1)

    def test_multikrum(self):
        self.run_krum("mkrum", {"name": "multikrum", "num_malicious_clients": 2,
                                "num_clients_to_keep": 4}, f=2, keep=4)

    def test_multikrum_keeps_n_minus_f_by_default(self):
        self.run_krum("mkrum0", {"name": "multikrum", "num_malicious_clients": 2}, f=2, keep=9)


class CentralDp(PlatformTestCase):
    def run_dp(self, job, clip, z, rounds=2):
        spec = job_spec(job, clients=CLIENTS, rounds=rounds, fan_in=4, update="delta",
                        dp={"clip_norm": clip, "noise_multiplier": z})
        self.client.create_job(spec)
        rng = np.random.default_rng(5)
        x = {k: np.zeros(s) for k, s in MODEL.items()}
        for r in range(rounds):
            total, acc = 0, {k: np.zeros(s) for k, s in MODEL.items()}
            for c in range(CLIENTS):
                scale = 0.003 if c % 3 == 0 else 1.0  # a third short enough to pass unclipped
                tensors = {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in MODEL.items()}
                n = int(rng.integers(1, 50))
                self.client.push(job, tensors, client=f"c{c}", num_examples=n, round_=r)
                norm = np.sqrt(sum(float(np.sum(t.astype(np.float64) ** 2)) for t in tensors.values()))
                factor = min(1.0, clip / norm)
                for k in acc:
                    acc[k] += n * factor * tensors[k].astype(np.float64)
                total += n
            x = {k: x[k] + acc[k] / total for k in x}
            status = self.client.wait_round(job, r + 1, timeout=30)
            self.assertEqual(status["history"][r]["dp"],
                             {"clip_norm": clip, "noise_std": z * clip / CLIENTS})
            model, _ = self.client.pull(job)
        return model, x

    def test_updates_are_clipped_at_the_leaves(self):
        model, expected = self.run_dp("clip", clip=0.5, z=0.0)
        assert_model_equal(self, model, expected)

    def test_noise_has_the_stated_deviation(self):
        clip, z = 1.0, 2.0
        model, expected = self.run_dp("noise", clip=clip, z=z, rounds=1)
        diff = np.concatenate([(model[k].astype(np.float64) - expected[k]).ravel() for k in MODEL])
        sigma = z * clip / CLIENTS
        # 1186 draws: the sample deviation is within 10% of sigma, and the mean within
        # 4 sigma / sqrt(n), with overwhelming probability; no noise would give ~1e-7.
        self.assertLess(abs(diff.std() / sigma - 1), 0.1, diff.std())
        self.assertLess(abs(diff.mean()), 4 * sigma / np.sqrt(diff.size))


class StrategySpecs(PlatformTestCase):
    def test_fedprox_hands_mu_to_clients_and_averages(self):
        spec = job_spec("prox", clients=4, rounds=1, strategy={"name": "fedprox", "proximal_mu": 0.01})
        self.client.create_job(spec)
        status = self.client.job("prox")
        self.assertEqual(status["spec"]["strategy"], {"name": "fedprox", "proximal_mu": 0.01})
        rng = np.random.default_rng(3)
        updates = []
        for c in range(4):
            tensors, exact = random_update(rng)
            self.client.push("prox", tensors, client=f"p{c}", num_examples=c + 1, round_=0)
            updates.append((c + 1, exact))
        self.client.wait_round("prox", 1, timeout=30)
        got, _ = self.client.pull("prox")
        total = sum(n for n, _ in updates)
        assert_model_equal(self, got, {k: sum(n * u[k] for n, u in updates) / total for k in MODEL})

    def test_bad_strategies_are_refused(self):
        self.client.create_job(job_spec("keep", clients=2, rounds=1))
        bad = [({"name": "fedsgd"}, "not supported"),
               ({"name": "fedadam", "beta1": 0.9}, "no parameter beta1"),
               ({"name": "fedadam", "beta_1": 1.5}, "beta_1 must be between"),
               ({"name": "fedadam", "eta": "fast"}, "eta must be a number"),
               ({"name": "fedprox"}, "proximal_mu"),
               ({"name": "fedadagrad", "beta_1": 0.9}, "no parameter beta_1"),
               ({"nom": "fedavg"}, "name"),
               ({"name": "trimmed_mean", "beta": 0.5}, "beta must be between"),
               ({"name": "krum", "num_malicious_clients": 1.5}, "integers"),
               ({"name": "krum", "num_clients_to_keep": 2}, "no parameter num_clients_to_keep"),
               ({"name": "median", "per_leaf": 1}, "per_leaf must be true or false"),
               ({"name": "fedavg", "per_leaf": True}, "no parameter per_leaf")]
        for dp, why in [({"clip_norm": 1.0}, "needs update: delta"),
                        ({"clip_norm": 0, "noise_multiplier": 1}, "clip_norm must be > 0"),
                        ({"clip_norm": -1}, ">= 0"),
                        ({"clip_norm": 1, "sigma": 1}, "no parameter sigma")]:
            with self.subTest(dp=dp):
                with self.assertRaises(LiflError) as e:
                    spec = job_spec("bad", clients=2, rounds=1, dp=dp)
                    if "needs" not in why:
                        spec["update"] = "delta"
                    self.client.create_job(spec)
                self.assertEqual(e.exception.status, 422)
                self.assertIn(why, e.exception.detail)
        for strategy, why in bad:
            with self.subTest(strategy=strategy):
                with self.assertRaises(LiflError) as e:
                    self.client.create_job(job_spec("bad", clients=2, rounds=1, strategy=strategy))
                self.assertEqual(e.exception.status, 422)
                self.assertEqual(e.exception.code, "invalid_job_spec")
                self.assertIn(why, e.exception.detail)
        # Nothing accepted before was disturbed, and no half-made job exists.
        self.assertEqual(self.client.job("keep")["round"], 0)
        with self.assertRaises(LiflError) as e:
            self.client.job("bad")
        self.assertEqual(e.exception.status, 404)


if __name__ == "__main__":
    unittest.main()
