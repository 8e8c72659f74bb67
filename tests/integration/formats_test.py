"""Blockwise int8 updates (docs/api.md "Update formats"): int8 values plus `<name>:scale`,
one F32 scale per 64 or 128 values of the last dimension, mixed in one round with F32
updates, averaged exactly as the dequantised values (q * scale, computed here in float64
from the very bytes pushed). Malformed int8 uploads are refused and disturb nothing.

Tolerance: assert_model_equal's 2e-5 of the largest magnitude (fp32 accumulation); the
platform multiplies w * scale first, then q: one more fp32 rounding per term."""
import os
import signal
import unittest

import numpy as np

from lifl_client import LiflError, decode_safetensors, encode_safetensors
from lifl_harness import MODEL, PlatformTestCase, assert_model_equal, dequantised, fedavg, job_spec


class Int8Updates(PlatformTestCase):
    def test_int8_updates_are_dequantised_on_the_fly(self):
        clients, rounds = 12, 2
        self.client.create_job(job_spec("i8", clients=clients, rounds=rounds, fan_in=4))
        rng = np.random.default_rng(8)
        encodings = [("I8", 64), ("I8", 128), ("F32", 0)]
        for r in range(rounds):
            updates = []
            for c in range(clients):
                tensors = {n: rng.standard_normal(s).astype(np.float32) * 3 for n, s in MODEL.items()}
                dtype, block = encodings[c % 3]
                body = encode_safetensors(tensors, dtype, block=block or 64)
                n = int(rng.integers(1, 300))
                self.client.push_raw("i8", body, client=f"c{c}", num_examples=n, round_=r)
                updates.append((n, dequantised(body, MODEL)))
            self.client.wait_round("i8", r + 1, timeout=30)
            model, _ = self.client.pull("i8")
            assert_model_equal(self, model, fedavg(updates))
        # An int8 body is about a quarter of the F32 one (block 64: 1 + 4/64 bytes a value).
        big = {"w": np.ones((100, 1024), np.float32)}
        ratio = len(encode_safetensors(big, "I8")) / len(encode_safetensors(big, "F32"))
        self.assertLess(ratio, 0.27)

    def test_queued_updates_fold_together(self):
        # With the aggregators stopped (SIGSTOP), the updates pile up in their queues; let go,
        # each leaf folds what is queued in fused passes (kernels::accumulateMany): all int8
        # of one block size (the int8 block path), then a mix of formats (the chunked path).
        # The result must be exactly what single folds give.
        clients = 12
        self.client.create_job(job_spec("queued", clients=clients, rounds=2, fan_in=6))
        rng = np.random.default_rng(12)
        for r, encodings in enumerate(([("I8", 64)], [("I8", 64), ("F32", 0), ("I8", 128),
                                                      ("F16", 0)])):
            plan = self.client.job("queued")["plan"]
            pids = {self.platform.pid_of(i) for i in plan["instances"] if i}
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            updates = []
            try:
                for c in range(clients):
                    tensors = {n: rng.standard_normal(s).astype(np.float32) * 3
                               for n, s in MODEL.items()}
                    dtype, block = encodings[c % len(encodings)]
                    body = encode_safetensors(tensors, dtype, block=block or 64)
                    n = int(rng.integers(1, 300))
                    self.client.push_raw("queued", body, client=f"c{c}", num_examples=n, round_=r)
                    updates.append((n, dequantised(body, MODEL)))
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            self.client.wait_round("queued", r + 1, timeout=30)
            model, _ = self.client.pull("queued")
            assert_model_equal(self, model, fedavg(updates))

    def test_malformed_int8_is_refused(self):
        self.client.create_job(job_spec("bad8", clients=2, rounds=1))
        rng = np.random.default_rng(9)
        tensors = {n: rng.standard_normal(s).astype(np.float32) for n, s in MODEL.items()}
        good = decode_safetensors(encode_safetensors(tensors, "I8"))

        def body(**changes):
            arrays = dict(good)
            for k, v in changes.items():
                k = k.replace("__", ":").replace("_", ".")
                if v is None:
                    arrays.pop(k)
                else:
                    arrays[k] = v
            return raw_safetensors(arrays)

        cases = [
            (body(fc_weight__scale=None), 422, "needs fc.weight:scale"),
            (body(fc_weight__scale=np.ones((10, 3), np.float32)), 422, "64 or 128"),
            (body(fc_weight__scale=np.ones((10, 2), np.float16)), 422, "must be F32"),
            (body(fc_weight__scale=np.full((10, 2), np.inf, np.float32)), 422, "NaN/Inf"),
            (body(fc_bias=np.ones(10, np.float32)), 422, "tensors"),  # a stray scale left over
        ]
        for data, status, why in cases:
            with self.subTest(why=why):
                with self.assertRaises(LiflError) as e:
                    self.client.push_raw("bad8", data, client="x", round_=0)
                self.assertEqual(e.exception.status, status)
                self.assertIn(why, e.exception.detail)
        # A model cannot be set in int8.
        with self.assertRaises(LiflError) as e:
            self.client._check(*self.client._request(
                "PUT", "/v1/jobs/bad8/model", raw_safetensors(good),
                {"Content-Type": "application/octet-stream"})[::2])
        self.assertEqual(e.exception.code, "unsupported_dtype")
        # Nothing was accepted; a good int8 update still is.
        self.assertEqual(self.client.job("bad8")["received"], 0)
        self.client.push("bad8", tensors, client="ok", round_=0, dtype="I8")
        self.assertEqual(self.client.job("bad8")["received"], 1)


def raw_safetensors(arrays):
    """Arrays as they are (their own dtypes), in safetensors."""
    import json
    import struct
    kinds = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8"}
    header, chunks, offset = {}, [], 0
    for name in sorted(arrays, key=lambda n: (-arrays[n].dtype.itemsize, n)):  # aligned
        a = np.ascontiguousarray(arrays[name])
        raw = a.tobytes()
        header[name] = {"dtype": kinds[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


if __name__ == "__main__":
    unittest.main()
