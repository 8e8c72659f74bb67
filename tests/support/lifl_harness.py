"""Test harness: runs a real `lifl up` process on loopback and checks results against numpy.

Every wait is bounded. The platform's log goes to a temporary file that is printed when a
test fails, so CI output shows what the agent and its function instances said.
"""
from __future__ import annotations

import json
import os
import socket
import signal
import subprocess
import tempfile
import time
import unittest
import urllib.request

import numpy as np

from lifl_client import Client, bf16_bits, bf16_to_f32, decode_safetensors

LIFL_BIN = os.environ.get("LIFL_BIN", os.path.join(os.path.dirname(__file__), "../../build/bin/lifl"))


def lifl_cli(*args, check=True, timeout=300):
    """Runs the `lifl` CLI (not the platform); with check, a non-zero exit raises with stderr."""
    r = subprocess.run([LIFL_BIN, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"lifl {' '.join(map(str, args))}: {r.stderr}")
    return r


def picking_args(settings, seed):
    """`lifl model run`'s flags for a completion request's sampling `settings` (temperature,
    top_k, top_p as the API takes them) and seed."""
    return ["--seed", str(seed), "--temperature", str(settings["temperature"]),
            "--top-k", str(settings.get("top_k", 0)), "--top-p", str(settings.get("top_p", 1))]


def model_run(model, tokens, max_tokens, *extra, logits=None):
    """`lifl model run`: its greedy tokens, and where a file for them is named, the logits each
    was chosen from (row 0: the prompt's; row i: decode step i's)."""
    r = lifl_cli("model", "run", "--model", model, "--tokens", ",".join(map(str, tokens)),
                 "--max-tokens", max_tokens, *extra, *(["--logits", logits] if logits else []))
    generated = json.loads(r.stdout)["tokens"]
    if not logits:
        return generated, None
    return generated, np.fromfile(logits, np.float32).reshape(len(generated), -1)


def free_port():
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_readyz(url, timeout, what, alive=lambda: True):
    """Polls GET url/readyz until it answers 200; fails after `timeout` s or when alive()
    turns false (the process exited)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if not alive():
            raise RuntimeError(f"{what} exited before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready in {timeout} s")
        time.sleep(0.1)


def wait_ready(proc, port_file, host, name, log_tail, timeout, scheme="http", context=None):
    """The URL of a lifl process once its port file exists and GET /readyz answers 200
    (context: the TLS context of an https gateway)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_tail()}")
        if os.path.exists(port_file):
            with open(port_file) as f:
                url = f"{scheme}://{host}:{f.read().strip()}"
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2, context=context) as r:
                    if r.status == 200:
                        return url
            except OSError:
                pass
        time.sleep(0.02)
    raise TimeoutError(f"{name} not ready in {timeout} s:\n{log_tail()}")


class Platform:
    """`lifl up` on a free port, with an optional YAML config."""

    def __init__(self, router="ebpf", config: str | None = None, warm_pool=4, store_bytes=1 << 30,
                 data_dir: str | None = None, extra_args: list | None = None,
                 prefix: list | None = None, tls=None):
        """prefix: a command that runs `lifl up` (setpriv with a capability set, say);
        tls: the ssl.SSLContext clients use where the config makes the gateway https."""
        self.tmp = tempfile.TemporaryDirectory(prefix="lifl-test-")
        self.port_file = os.path.join(self.tmp.name, "port")
        self.log_path = os.path.join(self.tmp.name, "lifl.log")
        args = [*(prefix or []), LIFL_BIN, "up", "--port", "0", "--port-file", self.port_file, "--router", router,
                "--data-dir", data_dir or os.path.join(self.tmp.name, "data"), "--warm-pool", str(warm_pool),
                "--store-bytes", str(store_bytes)]
        if config:
            cfg = os.path.join(self.tmp.name, "config.yaml")
            with open(cfg, "w") as f:
                f.write(config)
            args += ["--config", cfg]
        args += [str(a) for a in extra_args or []]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self.url = wait_ready(self.proc, self.port_file, "127.0.0.1", "lifl up", self.log_tail, 30,
                                  scheme="https" if tls else "http", context=tls)
        except Exception:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.log.close()
            self.tmp.cleanup()
            raise
        self.client = Client(self.url, tls=tls)

    def instances(self) -> list:
        with urllib.request.urlopen(self.url + "/v1/instances", timeout=5) as r:
            return json.loads(r.read())

    def pid_of(self, instance_id: int) -> int:
        for i in self.instances():
            if i["id"] == instance_id:
                return i["pid"]
        raise KeyError(instance_id)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            return r.read().decode()

    def log_tail(self, lines=60) -> str:
        self.log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-lines:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.client.close()
        self.log.close()
        self.tmp.cleanup()


def failed_so_far(case: unittest.TestCase) -> bool:
    """In tearDown: did this test fail? (Python 3.11 records the error in the result and
    leaves the outcome's `success` set.)"""
    outcome = getattr(case, "_outcome", None)
    result = getattr(outcome, "result", None)
    if result is None:
        return False
    return not getattr(outcome, "success", True) or any(
        test is case or getattr(test, "test_case", None) is case  # a subTest's failure
        for test, _ in list(result.errors) + list(result.failures))


def dpdk_missing():
    """Why the DPDK router cannot run here, or None: it needs root and free hugepages
    (scripts/setup.sh --hugepages, which the test command runs)."""
    if os.geteuid() != 0:
        return "the DPDK router needs root (CI runs as root)"
    with open("/proc/meminfo") as f:
        free = next((int(line.split()[1]) for line in f if line.startswith("HugePages_Free:")), 0)
    if free < 64:
        return f"{free} free hugepages here, 64 needed (scripts/setup.sh --hugepages)"
    return None


class PlatformTestCase(unittest.TestCase):
    """Starts one platform per test; prints its log when the test fails."""
    router = "ebpf"
    config = None
    warm_pool = 4

    def setUp(self):
        self.platform = Platform(router=self.router, config=self.config, warm_pool=self.warm_pool)
        self.client = self.platform.client

    def tearDown(self):
        if failed_so_far(self):
            print(f"\n---- lifl log ({self.id()}) ----\n{self.platform.log_tail(400)}")
        self.platform.stop()


# ---------------------------------------------------------------------------- FL helpers

MODEL = {"conv.weight": (8, 3, 3, 3), "fc.weight": (10, 96), "fc.bias": (10,)}


def job_spec(job_id, clients=50, rounds=3, fan_in=8, model=MODEL, **extra):
    spec = {"id": job_id,
            "model": {"tensors": {n: {"dtype": "F32", "shape": list(s)} for n, s in model.items()},
                      "init": "zeros"},
            "clients_per_round": clients, "rounds": rounds, "hierarchy": {"fan_in": fan_in}}
    spec.update(extra)
    return spec


def random_update(rng, model=MODEL, dtype="F32"):
    """A client update and the exact values the platform will widen it to."""
    tensors = {n: rng.standard_normal(s).astype(np.float32) for n, s in model.items()}
    if dtype == "F16":
        exact = {n: t.astype(np.float16).astype(np.float64) for n, t in tensors.items()}
    elif dtype == "BF16":
        exact = {n: bf16_to_f32(bf16_bits(t)).reshape(t.shape).astype(np.float64) for n, t in tensors.items()}
    else:
        exact = {n: t.astype(np.float64) for n, t in tensors.items()}
    return tensors, exact


def dequantised(body, model):
    """The values an update body stands for, from its own bytes, in float64: F32/F16/BF16 as
    stored, blockwise int8 as q times its block's scale (block 64 or 128, read from the scale
    tensor's shape)."""
    arrays = decode_safetensors(body)
    out = {}
    for name in model:
        x = arrays[name]
        if x.dtype != np.int8:
            out[name] = x.astype(np.float64)
            continue
        scales = arrays[name + ":scale"].astype(np.float64)
        cols = x.shape[-1] if x.ndim else 1
        block = 64 if scales.shape[-1] == -(-cols // 64) else 128
        per_value = np.repeat(scales, block, axis=-1)[..., :cols]
        out[name] = x.astype(np.float64) * per_value.reshape(x.shape)
    return out


def fedavg(updates):
    """Independent double-precision FedAvg: sum(n_i * w_i) / sum(n_i)."""
    total = sum(n for n, _ in updates)
    names = updates[0][1].keys()
    return {k: sum(n * u[k] for n, u in updates) / total for k in names}


# fp32 accumulation of at most a few hundred weighted terms: the error is bounded by about
# n_terms * 2^-24 relative to the largest partial sum, so 2e-5 of the tensor's largest
# magnitude is a safe, still tight, bound (a lost or doubled update moves values by ~1e-2).
RTOL = 2e-5


def assert_model_equal(test, got, ref, rtol=RTOL):
    test.assertEqual(sorted(got), sorted(ref))
    for k in ref:
        scale = max(float(np.max(np.abs(ref[k]))), 1e-12)
        err = float(np.max(np.abs(got[k].astype(np.float64) - ref[k])))
        test.assertLessEqual(err / scale, rtol, f"tensor {k}: max error {err:.3e} vs scale {scale:.3e}")


def exact_round(test, client, job_id, clients, seed):
    """One FedAvg round of `clients` random F32 updates through a running platform; the pulled
    model must equal numpy's FedAvg of them."""
    client.create_job(job_spec(job_id, clients=clients, rounds=1))
    rng = np.random.default_rng(seed)
    updates = []
    for c in range(clients):
        tensors, exact = random_update(rng)
        n = int(rng.integers(1, 100))
        test.assertEqual(client.push(job_id, tensors, client=f"c{c}", num_examples=n, round_=0),
                         {"accepted": True, "round": 0})
        updates.append((n, exact))
    test.assertEqual(client.wait_round(job_id, 1, timeout=60)["round"], 1)
    model, _ = client.pull(job_id)
    assert_model_equal(test, model, fedavg(updates))
