"""An end-to-end round on the GPU (docs/gpu.md): `lifl up` with a job of `device: cuda`, 50
clients pushing F32, BF16 and int8 updates over two rounds; the leaves fold on the device,
reading the updates where the gateway wrote them (the store's segment, registered for the
GPU), and each round's model must match numpy's FedAvg of the values pushed.

Runs where a CUDA device is present (the GPU machine: scripts/device_bundle.sh and
docs/gpu.md say how); elsewhere it is skipped with a message saying so.

Tolerance: the harness's 2e-5 of each tensor's largest magnitude (fp32 sums, as on the CPU)."""
import shutil
import subprocess
import unittest

import numpy as np

from lifl_client import encode_safetensors
from lifl_harness import PlatformTestCase, assert_model_equal, dequantised, fedavg, job_spec

MODEL = {"dense.weight": (256, 1024), "dense.bias": (1024,), "head.weight": (10, 256)}


def cuda_device_present():
    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


@unittest.skipUnless(cuda_device_present(), "SKIPPED: no CUDA device here; run on the GPU machine")
class GpuRound(PlatformTestCase):
    router = "userspace"  # the GPU machine's kernel may not offer the BPF router
    warm_pool = 8

    def test_fifty_clients_on_the_gpu_match_numpy(self):
        clients, rounds = 50, 2
        self.client.create_job(job_spec("gpu", clients=clients, rounds=rounds, fan_in=8,
                                        model=MODEL, device="cuda"))
        self.assertEqual(self.client.job("gpu")["device"], "cuda")
        rng = np.random.default_rng(5)
        for r in range(rounds):
            updates = []
            for c in range(clients):
                tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in MODEL.items()}
                dtype = ("F32", "BF16", "I8")[c % 3]
                body = encode_safetensors(tensors, dtype)
                n = int(rng.integers(1, 200))
                self.client.push_raw("gpu", body, client=f"g{c}", num_examples=n, round_=r)
                updates.append((n, dequantised(body, MODEL)))
            self.client.wait_round("gpu", r + 1, timeout=60)
            model, _ = self.client.pull("gpu")
            assert_model_equal(self, model, fedavg(updates))
        log = self.platform.log_tail(2000)
        self.assertIn("leaf folds on the GPU", log, "the leaves must have folded on the device")
        self.assertNotIn("leaf folds on the CPU", log)


if __name__ == "__main__":
    unittest.main()
