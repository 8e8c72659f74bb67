"""The lifl CLI as a user drives it: --help everywhere, job/push/pull/status against a running
`lifl up`, `lifl bench clients`, and a clean stop that leaves nothing behind."""
import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import unittest

import numpy as np

from lifl_client import decode_safetensors, encode_safetensors
from lifl_harness import (LIFL_BIN, Platform, PlatformTestCase, assert_model_equal, dpdk_missing,
                          fedavg)

SPEC_YAML = """
id: cli
model:
  tensors:
    w: {dtype: F32, shape: [4, 5]}
    b: {dtype: F32, shape: [5]}
  init: zeros
clients_per_round: 3
rounds: 1
hierarchy: {fan_in: 2}
"""


def lifl(*args, timeout=60):
    return subprocess.run([LIFL_BIN, *args], capture_output=True, text=True, timeout=timeout)


class Help(unittest.TestCase):
    def test_every_command_answers_help(self):
        for cmd in ([], ["up"], ["push"], ["pull"], ["job"], ["status"], ["bench"], ["instance"]):
            r = lifl(*cmd, "--help")
            self.assertEqual(r.returncode, 0, f"lifl {cmd} --help: {r.stderr}")
            self.assertIn("usage", r.stdout)
        r = lifl("frobnicate")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("unknown command", r.stderr)

    def test_bad_flags_are_clear_errors(self):
        r = lifl("up", "--router", "carrier-pigeon", "--port", "0")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("invalid_config", r.stderr)
        r = lifl("push", "--job", "x", "--file", "/nonexistent", "--client", "c")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("cannot read", r.stderr)


class Cli(PlatformTestCase):
    def test_job_push_pull_status(self):
        url = self.platform.url
        with tempfile.TemporaryDirectory() as d:
            spec = os.path.join(d, "spec.yaml")
            with open(spec, "w") as f:
                f.write(SPEC_YAML)
            r = lifl("job", "create", spec, "--url", url)
            self.assertEqual(r.returncode, 0, r.stderr)
            rng = np.random.default_rng(5)
            updates = []
            # One update each as safetensors, .npz (float32) and compressed .npz (float64,
            # sent as float32).
            for c in range(3):
                t = {"w": rng.standard_normal((4, 5)), "b": rng.standard_normal(5)}
                if c == 0:
                    path = os.path.join(d, "u0.safetensors")
                    with open(path, "wb") as f:
                        f.write(encode_safetensors({k: v.astype(np.float32) for k, v in t.items()}))
                elif c == 1:
                    path = os.path.join(d, "u1.npz")
                    np.savez(path, **{k: v.astype(np.float32) for k, v in t.items()})
                else:
                    path = os.path.join(d, "u2.npz")
                    np.savez_compressed(path, **t)
                r = lifl("push", "--job", "cli", "--file", path, "--client", f"c{c}", "--examples", str(c + 1), "--url", url)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn('"accepted":true', r.stdout)
                updates.append((c + 1, {k: v.astype(np.float32).astype(np.float64) for k, v in t.items()}))
            self.client.wait_round("cli", 1)
            out = os.path.join(d, "model.safetensors")
            r = lifl("pull", "--job", "cli", "--out", out, "--url", url)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("round 1", r.stdout)
            with open(out, "rb") as f:
                assert_model_equal(self, decode_safetensors(f.read()), fedavg(updates))
            r = lifl("status", "--url", url)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("ready", r.stdout)
            self.assertRegex(r.stdout, r"job cli\s+round 1\s+done")
            r = lifl("job", "status", "cli", "--url", url)
            self.assertIn('"state": "done"', r.stdout)
            r = lifl("push", "--job", "cli", "--file", out, "--client", "late", "--url", url)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("job_finished", r.stderr)

    def test_push_numpy_files_bad_cases(self):
        url = self.platform.url
        self.client.create_job({"id": "np1", "model": {"tensors": {"w": {"dtype": "F32", "shape": [3]}},
                                                       "init": "zeros"},
                                "clients_per_round": 2, "rounds": 1})
        with tempfile.TemporaryDirectory() as d:
            good = os.path.join(d, "w.npy")  # one array, named by the file's stem
            np.save(good, np.array([1.0, 2.0, 3.0], np.float32))
            r = lifl("push", "--job", "np1", "--file", good, "--client", "a", "--url", url)
            self.assertEqual(r.returncode, 0, r.stderr)
            named = os.path.join(d, "other.npy")
            np.save(named, np.array([3.0, 2.0, 1.0]))
            r = lifl("push", "--job", "np1", "--file", named, "--client", "b", "--url", url)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("tensor_mismatch", r.stderr)  # named "other": the gateway refuses it
            cases = {"garbage.npy": (b"not numpy at all", "not a .npy array"),
                     "short.npy": (None, "data bytes"),
                     "fortran.npy": (None, "Fortran order"),
                     "ints.npy": (None, "dtype <i8"),
                     "garbage.npz": (b"PK but not a zip", "not a readable .npz")}
            for name, (raw, why) in cases.items():
                path = os.path.join(d, name)
                if name == "short.npy":
                    np.save(path, np.zeros(3, np.float32))
                    with open(path, "r+b") as f:
                        f.truncate(os.path.getsize(path) - 4)
                elif name == "fortran.npy":
                    np.save(path, np.asfortranarray(np.zeros((2, 3), np.float32)))
                elif name == "ints.npy":
                    np.save(path, np.zeros(3, np.int64))
                else:
                    with open(path, "wb") as f:
                        f.write(raw)
                with self.subTest(case=name):
                    r = lifl("push", "--job", "np1", "--file", path, "--client", "c", "--tensor", "w",
                             "--url", url)
                    self.assertNotEqual(r.returncode, 0)
                    self.assertIn(why, r.stderr)
            r = lifl("push", "--job", "np1", "--file", named, "--client", "b", "--tensor", "w", "--url", url)
            self.assertEqual(r.returncode, 0, r.stderr)
        self.client.wait_round("np1", 1)
        model, _ = self.client.pull("np1")
        np.testing.assert_allclose(model["w"], [2.0, 2.0, 2.0], rtol=1e-7)  # (1+3)/2, (2+2)/2, (3+1)/2

    def test_bench_clients_against_running_platform(self):
        r = lifl("bench", "clients", "--clients", "10", "--params", "5000", "--rounds", "2", "--fan-in", "4",
                 "--url", self.platform.url, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("PASS", r.stdout)


class Lifecycle(unittest.TestCase):
    def test_clean_stop(self):
        before = set(glob.glob("/dev/shm/lifl-*"))
        p = Platform(warm_pool=3)
        pids = [i["pid"] for i in p.instances()]
        self.assertEqual(len(pids), 3)
        p.proc.send_signal(signal.SIGTERM)
        self.assertEqual(p.proc.wait(timeout=15), 0)
        for pid in pids:  # every function instance is gone
            self.assertFalse(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z")
        self.assertEqual(set(glob.glob("/dev/shm/lifl-*")) - before, set(), "the store segment is removed")
        p.stop()

    def test_one_agent_per_data_dir(self):
        with tempfile.TemporaryDirectory() as d:
            first = Platform(data_dir=d)
            try:
                r = lifl("up", "--port", "0", "--data-dir", d, timeout=30)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn("data_dir_in_use", r.stderr)
                self.assertEqual(len(first.instances()), 4, "the first agent still serves")
            finally:
                first.stop()

    def test_embedded_bench(self):
        r = lifl("bench", "clients", "--clients", "6", "--params", "2000", "--rounds", "1", "--router", "userspace",
                 timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("PASS", r.stdout)


@unittest.skipIf(dpdk_missing(), dpdk_missing())
class DpdkRouterCli(unittest.TestCase):
    """`lifl up --router dpdk`: a clean stop removes the node's DPDK files (its hugepages are
    free again); without hugepages it refuses to start, saying why."""

    def test_clean_stop_gives_the_hugepages_back(self):
        p = Platform(router="dpdk", warm_pool=2)
        try:
            m = re.search(r"store /dev/shm/(lifl-[0-9a-f]+)", p.log_tail())
            self.assertIsNotNone(m, p.log_tail())
            prefix = m.group(1)
            self.assertTrue(os.path.isdir(f"/var/run/dpdk/{prefix}"))
            self.assertTrue(glob.glob(f"/dev/hugepages/{prefix}map_*"), "its hugepage files")
            p.proc.send_signal(signal.SIGTERM)
            self.assertEqual(p.proc.wait(timeout=15), 0)
            self.assertFalse(os.path.exists(f"/var/run/dpdk/{prefix}"))
            self.assertEqual(glob.glob(f"/dev/hugepages/{prefix}map_*"), [])
        finally:
            p.stop()

    def test_without_hugepages_it_refuses_to_start(self):
        if not shutil.which("unshare"):
            self.skipTest("SKIPPED: no unshare(1) here")
        # In a mount namespace of its own, hugetlbfs unmounted: no hugepages for DPDK.
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run(
                ["unshare", "-m", "sh", "-c",
                 'umount /dev/hugepages 2>/dev/null; exec "$0" up --port 0 --router dpdk '
                 '--data-dir "$1"', LIFL_BIN, d],
                capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("dpdk_error", r.stderr)
        self.assertIn("hugepages", r.stderr)


if __name__ == "__main__":
    unittest.main()
