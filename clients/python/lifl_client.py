"""Python client for LIFL (standard library + numpy; torch optional).

    from lifl_client import Client
    c = Client("http://127.0.0.1:8080")
    c.create_job({"id": "demo", "model": {...}, "clients_per_round": 20, "rounds": 3})
    c.push("demo", {"dense.weight": w, "dense.bias": b}, client="alice", num_examples=120)
    model, round_ = c.pull("demo")

Updates travel as safetensors bodies with CloudEvents binary-mode headers (API.md).
A torch state dict can be pushed directly: tensors are converted with .detach().cpu().numpy().
"""
from __future__ import annotations

__version__ = "0.1.0"

import http.client
import json
import socket
import struct
import time
import urllib.parse
import uuid

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I32": np.int32,
           "I64": np.int64, "U8": np.uint8, "I8": np.int8}


class LiflError(Exception):
    """A non-2xx answer: `status`, `code` and `detail` from API.md's error body."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


INT8_SCALE_SUFFIX = ":scale"


def quantize_int8(a: np.ndarray, block: int = 64):
    """Blockwise int8 (LIFL's update format): per block of `block` values along the last
    dimension, scale = max|x| / 127 and q = round(x / scale). Returns (q int8, scales float32
    of shape a.shape[:-1] + (ceil(D / block),)); x is q * scale."""
    if block not in (64, 128):
        raise ValueError("block must be 64 or 128")
    x = np.asarray(a, dtype=np.float32).reshape(-1, a.shape[-1] if a.ndim else 1)
    rows, cols = x.shape
    blocks = -(-cols // block)
    padded = np.zeros((rows, blocks * block), dtype=np.float32)
    padded[:, :cols] = x
    per = padded.reshape(rows, blocks, block)
    scales = (np.abs(per).max(axis=2) / 127.0).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    q = np.clip(np.rint(per / safe[:, :, None]), -127, 127).astype(np.int8)
    q = q.reshape(rows, blocks * block)[:, :cols].reshape(a.shape)
    return q, scales.reshape(tuple(a.shape[:-1]) + (blocks,) if a.ndim else (blocks,))


def encode_safetensors(tensors: dict, dtype: str = "F32", metadata: dict | None = None,
                       block: int = 64) -> bytes:
    """Serialises {name: array} as safetensors. dtype: F32, F16 or BF16 for every tensor, or I8
    (blockwise int8: each tensor as int8 values plus `<name>:scale`, see quantize_int8)."""
    arrays = {}
    for name in sorted(tensors):
        arr = _to_numpy(tensors[name])
        if dtype == "I8":
            arrays[name], arrays[name + INT8_SCALE_SUFFIX] = quantize_int8(arr, block)
        else:
            arrays[name] = arr
    header, chunks, offset = {}, [], 0
    # Wider elements first: each tensor then starts aligned to its element size (the header
    # is padded to 8 bytes), which LIFL requires to read it in place.
    for name in sorted(arrays, key=lambda n: (arrays[n].dtype == np.int8, n)):
        arr = arrays[name]
        if arr.dtype == np.int8:
            kind, raw = "I8", arr.tobytes()
        elif name.endswith(INT8_SCALE_SUFFIX) and dtype == "I8":
            kind, raw = "F32", np.ascontiguousarray(arr, dtype=np.float32).tobytes()
        elif dtype == "BF16":
            kind, raw = dtype, bf16_bits(arr).tobytes()
        else:
            kind = "F32" if dtype == "I8" else dtype
            raw = np.ascontiguousarray(arr, dtype={"F32": np.float32, "F16": np.float16}[kind]).tobytes()
        header[name] = {"dtype": kind, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def decode_safetensors(body: bytes) -> dict:
    (n,) = struct.unpack("<Q", body[:8])
    header = json.loads(body[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        raw = body[8 + n + b:8 + n + e]
        if t["dtype"] == "BF16":
            arr = bf16_to_f32(np.frombuffer(raw, dtype=np.uint16))
        else:
            arr = np.frombuffer(raw, dtype=_DTYPES[t["dtype"]])
        out[name] = arr.reshape(t["shape"])
    return out


def model_tensors(tensors: dict, dtype: str = "F32") -> dict:
    """The job spec's `model.tensors` for {name: array or torch.Tensor}, e.g. a PyTorch
    model's state_dict(): every tensor's shape, held as `dtype` (the global model is F32)."""
    return {name: {"dtype": dtype, "shape": list(_to_numpy(t).shape)} for name, t in tensors.items()}


def _to_numpy(x):
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8080", timeout: float = 60.0, token: str | None = None,
                 tls=None):
        """token: the credential sent with every request where the platform runs with auth
        (docs/security.md): a client token (lifl token create) or the admin credential.
        tls: an ssl.SSLContext for an https:// URL (its CA, and for mTLS the client's
        certificate); None takes the system's defaults."""
        u = urllib.parse.urlparse(url)
        self.host, self.port, self.timeout = u.hostname, u.port or 8080, timeout
        self.https = u.scheme == "https"
        self.tls = tls
        self.token = token
        self._conn = None

    def _request(self, method, path, body=None, headers=None):
        headers = dict(headers or {})
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(2):
            if self._conn is None:
                if self.https:
                    self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                             context=self.tls)
                else:
                    self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 1:
                    raise

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _check(self, status, data):
        if status >= 300:
            try:
                doc = json.loads(data)
                raise LiflError(status, doc.get("error", ""), doc.get("detail", ""))
            except (ValueError, AttributeError):
                raise LiflError(status, f"http_{status}", data[:200].decode(errors="replace"))

    def create_job(self, spec: dict) -> dict:
        status, _, data = self._request("POST", "/v1/jobs", json.dumps(spec), {"Content-Type": "application/json"})
        self._check(status, data)
        return json.loads(data)

    def create_token(self, job_id: str, client: str, ttl_seconds: float | None = None) -> str:
        """A client token for `client` in `job_id` (needs the admin credential as token)."""
        req = {"job": job_id, "client": client}
        if ttl_seconds is not None:
            req["ttl_seconds"] = ttl_seconds
        status, _, data = self._request("POST", "/v1/tokens", json.dumps(req), {"Content-Type": "application/json"})
        self._check(status, data)
        return json.loads(data)["token"]

    def job(self, job_id: str) -> dict:
        status, _, data = self._request("GET", f"/v1/jobs/{job_id}")
        self._check(status, data)
        return json.loads(data)

    def cancel_job(self, job_id: str):
        """DELETE /v1/jobs/{id}: the job takes no more updates and stays listed as cancelled."""
        status, _, data = self._request("DELETE", f"/v1/jobs/{job_id}")
        self._check(status, data)

    def set_model(self, job_id: str, tensors: dict, dtype: str = "F32"):
        status, _, data = self._request("PUT", f"/v1/jobs/{job_id}/model", encode_safetensors(tensors, dtype),
                                        {"Content-Type": "application/octet-stream"})
        self._check(status, data)

    def push(self, job_id: str, tensors: dict, client: str, num_examples: int = 1, round_: int | None = None,
             ce_id: str | None = None, dtype: str = "F32", block: int = 64) -> dict:
        """Pushes one update; returns the gateway's 202 body. Raises LiflError on rejection.
        dtype: F32, F16, BF16, or I8 (blockwise int8 with `block` values per scale)."""
        if round_ is None:
            round_ = self.job(job_id)["round"]
        body = encode_safetensors(tensors, dtype, block=block)
        return self.push_raw(job_id, body, client, num_examples, round_, ce_id)

    def push_raw(self, job_id, body: bytes, client: str, num_examples=1, round_=0, ce_id=None, headers=None,
                 retries: int = 3, backoff: float = 0.2):
        """Pushes a prepared body. A timeout, a lost connection or a 503 (the store is full, the
        gateway is busy) is retried up to `retries` times, after backoff * 2^k seconds, with
        the same ce-id: the gateway counts an update once however often it arrives."""
        h = {"ce-specversion": "1.0", "ce-type": "dev.lifl.update", "ce-id": ce_id or uuid.uuid4().hex,
             "ce-source": client, "ce-round": str(round_), "ce-numexamples": str(num_examples),
             "Content-Type": "application/octet-stream"}
        h.update(headers or {})
        for attempt in range(retries + 1):
            try:
                status, _, data = self._request("POST", f"/v1/jobs/{job_id}/updates", body, h)
                if status != 503 or attempt == retries:
                    break
            except (socket.timeout, ConnectionError, http.client.HTTPException):
                self.close()
                if attempt == retries:
                    raise
            time.sleep(backoff * 2 ** attempt)
        self._check(status, data)
        return json.loads(data)

    def pull_state_dict(self, job_id: str):
        """The global model as a PyTorch state dict ({name: torch.Tensor}); needs torch."""
        import torch  # optional: only this helper needs it
        model, round_ = self.pull(job_id)
        return {k: torch.from_numpy(np.array(v)) for k, v in model.items()}, round_

    def pull(self, job_id: str, dtype: str | None = None):
        """Returns ({name: float32 array}, round). dtype "bf16": served in half the bytes."""
        query = f"?dtype={dtype}" if dtype else ""
        status, headers, data = self._request("GET", f"/v1/jobs/{job_id}/model{query}")
        self._check(status, data)
        return decode_safetensors(data), int(headers["lifl-round"])

    def wait_round(self, job_id: str, round_: int, timeout: float = 60.0) -> dict:
        """Polls (bounded) until the job has completed `round_` rounds."""
        import time
        deadline = time.monotonic() + timeout
        while True:
            st = self.job(job_id)
            if st["round"] >= round_ or st["state"] in ("failed", "cancelled"):
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} stayed at round {st['round']}: {st}")
            time.sleep(0.02)
