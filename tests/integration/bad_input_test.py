"""Every rejection case of API.md gets its status and JSON error body, and after all of them
the round still gives the exact FedAvg of the accepted updates (nothing accepted is disturbed,
nothing rejected is counted)."""
import json
import socket
import struct
import unittest

import numpy as np

from lifl_client import LiflError, encode_safetensors
from lifl_harness import MODEL, PlatformTestCase, assert_model_equal, fedavg, job_spec, random_update

CLIENTS = 6


class BadInput(PlatformTestCase):
    def setUp(self):
        super().setUp()
        self.client.create_job(job_spec("j", clients=CLIENTS, rounds=2, fan_in=4))
        self.rng = np.random.default_rng(11)
        self.accepted = []

    def push_good(self, c, round_=0, ce_id=None):
        tensors, exact = random_update(self.rng)
        n = int(self.rng.integers(1, 100))
        reply = self.client.push("j", tensors, client=f"good{c}", num_examples=n, round_=round_, ce_id=ce_id)
        self.assertTrue(reply["accepted"])
        self.accepted.append((n, exact))
        return tensors, n

    def expect_error(self, status, code, fn):
        with self.assertRaises(LiflError) as ctx:
            fn()
        self.assertEqual((ctx.exception.status, ctx.exception.code), (status, code), ctx.exception.detail)
        self.assertTrue(ctx.exception.detail, "every error has a detail sentence")

    def raw(self, request: bytes, read_timeout=10) -> tuple:
        """Sends raw bytes on a fresh connection; returns (status, json body or None)."""
        host, port = self.platform.url.rsplit(":", 1)
        with socket.create_connection((host.replace("http://", ""), int(port)), timeout=read_timeout) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR) if request.endswith(b"#close") else None
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            status = int(head.split(b" ")[1]) if head else 0
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            while len(body) < length:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
            return status, (json.loads(body) if body else None)

    def update_headers(self, length, source="raw", ce_id="raw-1", round_=0):
        return (f"POST /v1/jobs/j/updates HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\n"
                f"ce-type: dev.lifl.update\r\nce-id: {ce_id}\r\nce-source: {source}\r\nce-round: {round_}\r\n"
                f"ce-numexamples: 3\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {length}\r\n\r\n").encode()

    def test_every_rejection_then_exact_round(self):
        tensors, _ = self.push_good(0, ce_id="first")
        body = encode_safetensors(tensors)
        push = lambda **kw: self.client.push_raw("j", kw.pop("body", body), kw.pop("client", "bad"), **kw)

        # 400: malformed safetensors and headers
        self.expect_error(400, "malformed_safetensors", lambda: push(body=b"\x00" * 3))
        self.expect_error(400, "malformed_safetensors", lambda: push(body=struct.pack("<Q", 5) + b"{oops"))
        self.expect_error(400, "malformed_safetensors", lambda: push(body=body[:-4]))
        self.expect_error(400, "malformed_safetensors", lambda: push(body=b""))
        self.expect_error(400, "bad_header", lambda: push(headers={"ce-specversion": "0.3"}))
        self.expect_error(400, "bad_header", lambda: push(headers={"ce-type": "other"}))
        self.expect_error(400, "bad_header", lambda: push(num_examples=0))
        self.expect_error(400, "bad_header", lambda: push(num_examples="-4"))
        self.expect_error(400, "bad_header", lambda: push(num_examples="many"))
        self.expect_error(400, "bad_header", lambda: push(headers={"ce-round": "x"}))
        self.expect_error(400, "bad_header", lambda: push(headers={"ce-id": ""}))
        self.expect_error(400, "bad_header", lambda: push(headers={"Content-Type": "application/json"}))
        # 404: unknown job
        self.expect_error(404, "unknown_job", lambda: self.client.push_raw("nope", body, "x"))
        self.expect_error(404, "unknown_job", lambda: self.client.pull("nope"))
        self.expect_error(404, "unknown_job", lambda: self.client.job("nope"))
        # 409: wrong round, second different update from one client, model locked
        self.expect_error(409, "wrong_round", lambda: push(round_=1))
        self.expect_error(409, "duplicate_client", lambda: self.client.push_raw("j", body, "good0", ce_id="other"))
        self.expect_error(409, "model_locked", lambda: self.client.set_model("j", tensors))
        self.expect_error(409, "job_exists", lambda: self.client.create_job(job_spec("j")))
        # 422: names, shapes, dtypes, NaN/Inf
        wrong_name = dict(tensors)
        wrong_name["extra"] = np.zeros(3, np.float32)
        self.expect_error(422, "tensor_mismatch", lambda: push(body=encode_safetensors(wrong_name)))
        missing = {k: v for k, v in tensors.items() if k != "fc.bias"}
        self.expect_error(422, "tensor_mismatch", lambda: push(body=encode_safetensors(missing)))
        wrong_shape = dict(tensors)
        wrong_shape["fc.bias"] = np.zeros(11, np.float32)
        self.expect_error(422, "tensor_mismatch", lambda: push(body=encode_safetensors(wrong_shape)))
        as_int = dict(tensors)
        as_int["fc.bias"] = np.zeros(10, np.float32)
        raw_i32 = bytearray(encode_safetensors(as_int))
        (n,) = struct.unpack("<Q", raw_i32[:8])
        raw_i32[8:8 + n] = raw_i32[8:8 + n].replace(b'"fc.bias":{"dtype":"F32"', b'"fc.bias":{"dtype":"I32"')
        self.expect_error(422, "unsupported_dtype", lambda: push(body=bytes(raw_i32)))
        for bad in (np.nan, np.inf, -np.inf):
            poisoned = {k: v.copy() for k, v in tensors.items()}
            poisoned["fc.weight"][3, 7] = bad
            self.expect_error(422, "non_finite", lambda: push(body=encode_safetensors(poisoned)))
        # 413: a body larger than the model allows, refused from the headers alone
        status, err = self.raw(self.update_headers(10 ** 9))
        self.assertEqual(status, 413)
        self.assertEqual(err["error"], "body_too_large")
        # 400: a truncated body (the client goes away mid-upload); its slot is freed
        with socket.create_connection(self.platform.url.replace("http://", "").split(":"), timeout=5) as s:
            s.sendall(self.update_headers(len(body), source="quitter", ce_id="q1") + body[: len(body) // 2])
        # bad job specs
        for bad_spec, status_code in ((b"{", 400), (json.dumps({"id": "x"}).encode(), 422)):
            status, err = self.raw(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   + f"Content-Length: {len(bad_spec)}\r\n\r\n".encode() + bad_spec)
            self.assertEqual(status, status_code, err)
            self.assertEqual(set(err), {"error", "detail"})
        status, err = self.raw(b"PATCH /v1/jobs/j HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual((status, err["error"]), (405, "method_not_allowed"))
        status, err = self.raw(b"GET /v2/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((status, err["error"]), (404, "not_found"))
        status, err = self.raw(b"NOT HTTP AT ALL\r\n\r\n")
        self.assertEqual((status, err["error"]), (400, "malformed_request"))

        # A chunked upload (no Content-Length) is accepted as well.
        chunked_tensors, chunked_exact = random_update(self.rng)
        chunked = encode_safetensors(chunked_tensors)
        pieces = b"".join(b"%x\r\n" % len(chunked[i:i + 7000]) + chunked[i:i + 7000] + b"\r\n"
                          for i in range(0, len(chunked), 7000)) + b"0\r\n\r\n"
        head = self.update_headers(0, source="chunky", ce_id="ch1").replace(
            b"Content-Length: 0", b"Transfer-Encoding: chunked")
        status, reply = self.raw(head + pieces)
        self.assertEqual((status, reply), (202, {"accepted": True, "round": 0}))
        self.accepted.append((3, chunked_exact))

        # A retry of an accepted update (same ce-id) is idempotent: 202 again, counted once.
        reply = self.client.push_raw("j", body, "good0", ce_id="first")
        self.assertEqual(reply, {"accepted": True, "round": 0, "duplicate": True})
        self.assertEqual(self.client.job("j")["received"], 2)

        # The quitter's slot was released: it can push again, and the round completes.
        self.wait_for(lambda: self.client.job("j")["received"] == 2)
        for c in range(1, CLIENTS - 2):
            self.push_good(c)
        tensors_q, exact_q = random_update(self.rng)
        self.client.push("j", tensors_q, client="quitter", num_examples=5, round_=0, ce_id="q2")
        self.accepted.append((5, exact_q))
        status = self.client.wait_round("j", 1)
        self.assertEqual(status["history"][0]["clients"], CLIENTS)
        model, r = self.client.pull("j")
        self.assertEqual(r, 1)
        assert_model_equal(self, model, fedavg(self.accepted))
        # Round 1 fills up; a 7th client is refused (round_full, or job_finished once the
        # last round is aggregated) and changes nothing.
        self.accepted = []
        for c in range(CLIENTS):
            self.push_good(c, round_=1)
        with self.assertRaises(LiflError) as ctx:
            self.client.push_raw("j", body, "late", round_=1)
        self.assertEqual(ctx.exception.status, 409)
        self.assertIn(ctx.exception.code, ("round_full", "job_finished"))
        self.client.wait_round("j", 2)
        model, r = self.client.pull("j")
        self.assertEqual(r, 2)
        assert_model_equal(self, model, fedavg(self.accepted))

    def test_round_full(self):
        self.client.create_job(job_spec("small", clients=2, rounds=1))
        for c in range(2):
            self.client.push_raw("small", encode_safetensors(random_update(self.rng)[0]), f"s{c}")
        # the round may already be aggregated (job done) or still full: both refuse with 409
        with self.assertRaises(LiflError) as ctx:
            self.client.push_raw("small", encode_safetensors(random_update(self.rng)[0]), "s9")
        self.assertEqual(ctx.exception.status, 409)
        self.assertIn(ctx.exception.code, ("round_full", "job_finished"))

    def wait_for(self, cond, timeout=10):
        import time
        deadline = time.monotonic() + timeout
        while not cond():
            self.assertLess(time.monotonic(), deadline, "condition not reached in time")
            time.sleep(0.02)


if __name__ == "__main__":
    unittest.main()
