"""PyTorch state dicts through the real platform (Debian's python3-torch, installed by
scripts/setup.sh): a job built from a torch model's state_dict (lifl_client.model_tensors),
its initial model set from that state dict, clients that train a copy with torch SGD and push
their state dicts (F32, and BF16 for one client), and the pulled state dict loaded back into
the model. Each round's model is checked against a float64 numpy FedAvg of the values pushed.

Tolerance: the harness's 2e-5 of each tensor's largest magnitude (fp32 sums of 6 terms)."""
import unittest

import numpy as np

from lifl_client import bf16_bits, bf16_to_f32, model_tensors
from lifl_harness import PlatformTestCase, assert_model_equal, fedavg

try:
    import torch
except ImportError:  # the set-up script installs it; say so loudly where it is missing
    torch = None

CLIENTS, ROUNDS = 6, 2


@unittest.skipIf(torch is None, "SKIPPED: python3-torch is not installed (scripts/setup.sh installs it)")
class TorchStateDicts(PlatformTestCase):
    def make_model(self):
        return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

    def test_state_dicts_train_and_load(self):
        torch.manual_seed(0)
        model = self.make_model()
        spec = {"id": "torch", "clients_per_round": CLIENTS, "rounds": ROUNDS,
                "model": {"tensors": model_tensors(model.state_dict())},
                "hierarchy": {"fan_in": 3}}
        self.client.create_job(spec)
        self.client.set_model("torch", model.state_dict())
        rng = np.random.default_rng(3)
        for r in range(ROUNDS):
            state, version = self.client.pull_state_dict("torch")
            self.assertEqual(version, r)
            self.assertTrue(all(isinstance(t, torch.Tensor) for t in state.values()))
            updates = []
            for c in range(CLIENTS):
                local = self.make_model()
                local.load_state_dict(state)
                opt = torch.optim.SGD(local.parameters(), lr=0.1)
                x = torch.from_numpy(rng.standard_normal((32, 64)).astype(np.float32))
                y = torch.from_numpy(rng.integers(0, 10, 32))
                opt.zero_grad()
                torch.nn.functional.cross_entropy(local(x), y).backward()
                opt.step()
                sd = local.state_dict()
                dtype = "BF16" if c == 0 else "F32"
                n = int(rng.integers(10, 100))
                self.client.push("torch", sd, client=f"t{c}", num_examples=n, round_=r, dtype=dtype)
                exact = {k: v.detach().numpy().astype(np.float64) for k, v in sd.items()}
                if dtype == "BF16":
                    exact = {k: bf16_to_f32(bf16_bits(v.astype(np.float32))).reshape(v.shape)
                             .astype(np.float64) for k, v in exact.items()}
                updates.append((n, exact))
            self.client.wait_round("torch", r + 1, timeout=30)
            got, _ = self.client.pull("torch")
            assert_model_equal(self, got, fedavg(updates))
        state, _ = self.client.pull_state_dict("torch")
        model.load_state_dict(state)  # names and shapes fit the model they came from
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v.numpy(), got[k])


if __name__ == "__main__":
    unittest.main()
