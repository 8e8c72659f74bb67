"""Credentials and rate limits (issue 8, docs/security.md), on a real `lifl up --auth`:

- the jobs API needs the admin credential (401 without or with a wrong one, 403 with a
  client token);
- an update needs a client token of its job whose client is its ce-source, checked from the
  headers before the body is read; every refusal leaves the round untouched, and the round of
  the accepted updates is numpy's exact FedAvg;
- tokens are Ed25519 signatures that verify with the published public key (checked with the
  `cryptography` package, independently of OpenSSL's use in LIFL);
- `lifl token create` and `lifl push --token` work from the command line;
- the per-client rate limit answers 429 with Retry-After, for that client only.
"""
import base64
import http.client
import json
import os
import socket
import stat
import tempfile
import time
import unittest

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lifl_client import Client, LiflError, encode_safetensors
from lifl_harness import (LIFL_BIN, Platform, assert_model_equal, failed_so_far, fedavg, job_spec,
                          lifl_cli, random_update)


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class AuthTestCase(unittest.TestCase):
    config = None

    def setUp(self):
        self.data_tmp = tempfile.TemporaryDirectory(prefix="lifl-auth-")
        self.data_dir = self.data_tmp.name
        self.platform = Platform(config=self.config, extra_args=["--auth"], data_dir=self.data_dir)
        self.admin_file = os.path.join(self.data_dir, "auth", "admin.token")
        with open(self.admin_file) as f:
            self.admin_secret = f.read().strip()
        self.anonymous = self.platform.client
        self.admin = Client(self.platform.url, token=self.admin_secret)

    def tearDown(self):
        if failed_so_far(self):
            print(f"\n---- lifl log ({self.id()}) ----\n{self.platform.log_tail()}")
        self.admin.close()
        self.platform.stop()
        self.data_tmp.cleanup()

    def client(self, token):
        """A client with `token`, closed when the test ends."""
        c = Client(self.platform.url, token=token)
        self.addCleanup(c.close)
        return c

    def expect_error(self, status, code, fn):
        with self.assertRaises(LiflError) as ctx:
            fn()
        self.assertEqual((ctx.exception.status, ctx.exception.code), (status, code), ctx.exception.detail)
        return ctx.exception

    def raw(self, request: bytes, timeout=10) -> tuple:
        """Sends raw bytes on a fresh connection; returns (status line + headers, body)."""
        host, port = self.platform.url.replace("http://", "").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            s.sendall(request)
            data = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return head.decode(errors="replace"), body


class Auth(AuthTestCase):
    def test_the_jobs_api_needs_the_admin_credential(self):
        mode = stat.S_IMODE(os.stat(self.admin_file).st_mode)
        self.assertEqual(mode, 0o600, "the admin credential is readable by its owner only")
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.data_dir, "auth", "signing.key")).st_mode), 0o600)

        self.expect_error(401, "unauthorized", lambda: self.anonymous.create_job(job_spec("j", clients=2)))
        wrong = self.client("0" * 64)
        self.expect_error(401, "unauthorized", lambda: wrong.create_job(job_spec("j", clients=2)))
        head, _ = self.raw(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(" 401 ", head.split("\r\n")[0])
        self.assertIn('www-authenticate: bearer realm="lifl"', head.lower())

        self.assertEqual(self.admin.create_job(job_spec("j", clients=2))["id"], "j")
        token = self.admin.create_token("j", "c0")
        as_client = self.client(token)
        self.expect_error(403, "forbidden", lambda: as_client.create_job(job_spec("k", clients=2)))
        status, _, _ = as_client._request("DELETE", "/v1/jobs/j")
        self.assertEqual(status, 403)
        status, _, data = self.admin._request("GET", "/v1/jobs")
        self.assertEqual(status, 200)
        self.assertEqual([j["id"] for j in json.loads(data)], ["j"], "refused calls created nothing")
        # Operations stay open: probes and metrics.
        for path in ("/livez", "/readyz", "/metrics"):
            self.assertEqual(self.anonymous._request("GET", path)[0], 200, path)

    def test_updates_need_their_clients_token_checked_before_the_body(self):
        clients = 4
        self.admin.create_job(job_spec("j", clients=clients, rounds=1))
        self.admin.create_job(job_spec("k", clients=clients, rounds=1))
        tokens = {c: self.admin.create_token("j", f"c{c}") for c in range(clients)}
        other_job = self.admin.create_token("k", "c0")
        short_lived = self.admin.create_token("j", "c0", ttl_seconds=1)
        rng = np.random.default_rng(5)
        tensors, _ = random_update(rng)

        def push_as(token, source="c0", ce_id=None):
            return self.client(token).push("j", tensors, client=source, round_=0,
                                                                ce_id=ce_id)

        forged = tokens[0][:-3] + ("AAA" if not tokens[0].endswith("AAA") else "BBB")
        claims = json.loads(b64url_decode(tokens[0].split(".")[1]))
        swapped = "lifl1." + base64.urlsafe_b64encode(
            json.dumps({**claims, "job": "j", "client": "c1"}).encode()).decode().rstrip("=") + \
            "." + tokens[0].split(".")[2]
        self.expect_error(401, "unauthorized", lambda: push_as(None))
        self.expect_error(401, "unauthorized", lambda: push_as(forged))
        self.expect_error(401, "unauthorized", lambda: push_as(swapped, source="c1"))
        self.expect_error(401, "unauthorized", lambda: push_as("lifl1.garbage"))
        self.expect_error(403, "forbidden", lambda: push_as(self.admin_secret))
        self.expect_error(403, "forbidden", lambda: push_as(other_job))
        self.expect_error(403, "forbidden", lambda: push_as(tokens[1], source="c0"))
        time.sleep(2.1)
        self.expect_error(401, "unauthorized", lambda: push_as(short_lived))
        self.assertEqual(self.admin.job("j")["received"], 0, "no refusal reached the round")
        self.assertEqual(self.admin.job("k")["received"], 0)

        # From the headers alone: a 10 MB body announced with Expect: 100-continue and never
        # sent is refused at once, without a 100 Continue.
        start = time.monotonic()
        head, body = self.raw(
            b"POST /v1/jobs/j/updates HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\n"
            b"ce-type: dev.lifl.update\r\nce-id: u1\r\nce-source: c0\r\nce-round: 0\r\n"
            b"ce-numexamples: 1\r\nContent-Type: application/octet-stream\r\n"
            b"Expect: 100-continue\r\nContent-Length: 10000000\r\n\r\n", timeout=5)
        self.assertLess(time.monotonic() - start, 4, "the answer did not wait for the body")
        self.assertNotIn("100 Continue", head)
        self.assertIn(" 401 ", head.split("\r\n")[0])
        self.assertEqual(json.loads(body)["error"], "unauthorized")

        # A client that sends its whole 8 MB body before reading (as http.client does) still
        # reads the refusal: the gateway reads and drops the rest before it closes.
        host, port = self.platform.url.replace("http://", "").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", "/v1/jobs/j/updates", b"\0" * (8 << 20), {
            "ce-specversion": "1.0", "ce-type": "dev.lifl.update", "ce-id": "big", "ce-source": "c0",
            "ce-round": "0", "ce-numexamples": "1", "Content-Type": "application/octet-stream"})
        answer = conn.getresponse()
        self.assertEqual((answer.status, json.loads(answer.read())["error"]), (401, "unauthorized"))
        conn.close()

        # A client token reads its own job, not another's.
        reader = self.client(tokens[2])
        self.assertEqual(reader.job("j")["id"], "j")
        self.assertEqual(reader.pull("j")[1], 0)
        self.expect_error(403, "forbidden", lambda: reader.job("k"))
        self.expect_error(401, "unauthorized", lambda: self.anonymous.job("j"))

        updates = []
        for c in range(clients):
            t, exact = random_update(rng)
            n = int(rng.integers(1, 100))
            reply = self.client(tokens[c]).push("j", t, client=f"c{c}", num_examples=n,
                                                                    round_=0)
            self.assertEqual(reply, {"accepted": True, "round": 0})
            updates.append((n, exact))
        self.assertEqual(self.admin.wait_round("j", 1, timeout=60)["round"], 1)
        model, _ = self.admin.pull("j")
        assert_model_equal(self, model, fedavg(updates))

    def test_tokens_are_ed25519_signatures_of_their_claims(self):
        status, _, data = self.anonymous._request("GET", "/v1/tokens/public-key")
        self.assertEqual(status, 200)
        key = json.loads(data)
        self.assertEqual(key["algorithm"], "Ed25519")
        public = Ed25519PublicKey.from_public_bytes(b64url_decode(key["public_key"]))
        before = int(time.time())
        token = self.admin.create_token("j", "client-7", ttl_seconds=120)
        prefix, claims_part, signature = token.split(".")
        self.assertEqual(prefix, "lifl1")
        public.verify(b64url_decode(signature), f"lifl1.{claims_part}".encode())  # raises if not
        claims = json.loads(b64url_decode(claims_part))
        self.assertEqual((claims["job"], claims["client"]), ("j", "client-7"))
        self.assertTrue(before + 120 <= claims["exp"] <= int(time.time()) + 121, claims)
        # A restart keeps the key and the admin credential: tokens outlive it.
        self.admin.close()
        self.platform.stop()
        self.platform = Platform(extra_args=["--auth"], data_dir=self.data_dir)
        self.admin = Client(self.platform.url, token=self.admin_secret)
        status, _, data = self.platform.client._request("GET", "/v1/tokens/public-key")
        self.assertEqual(json.loads(data)["public_key"], key["public_key"])
        self.admin.create_job(job_spec("j", clients=1, rounds=1))
        self.assertEqual(self.client(token).job("j")["id"], "j")

    def test_bad_token_requests_are_refused(self):
        def post(body, token=self.admin_secret):
            c = self.client(token)
            status, _, data = c._request("POST", "/v1/tokens", body, {"Content-Type": "application/json"})
            return status, json.loads(data) if data else None
        self.assertEqual(post(json.dumps({"job": "j", "client": "c"}), token=None)[0], 401)
        self.assertEqual(post("not json")[1]["error"], "invalid_token_request")
        self.assertEqual(post(json.dumps({"job": "j"}))[0], 400)
        self.assertEqual(post(json.dumps({"job": 3, "client": "c"}))[0], 400)
        self.assertEqual(post(json.dumps({"job": "j", "client": "c", "ttl_seconds": -5}))[0], 422)
        self.assertEqual(post(json.dumps({"job": "j", "client": "c", "ttl_seconds": 1e12}))[0], 422)
        self.assertEqual(post(json.dumps({"job": "", "client": "c"}))[0], 422)
        self.assertEqual(post(json.dumps({"job": "j", "client": "x" * 300}))[0], 422)
        status, _, _ = self.admin._request("GET", "/v1/tokens")
        self.assertEqual(status, 405)

    def test_the_command_line_creates_and_uses_tokens(self):
        url = self.platform.url
        self.assertEqual(lifl_cli("job", "list", "--url", url, check=False).returncode, 1)
        spec = os.path.join(self.platform.tmp.name, "spec.json")
        with open(spec, "w") as f:
            json.dump(job_spec("cli", clients=1, rounds=1), f)
        lifl_cli("job", "create", spec, "--url", url, "--token-file", self.admin_file)
        out = lifl_cli("token", "create", "--job", "cli", "--client", "c9", "--ttl", "600", "--url", url,
                       "--token-file", self.admin_file)
        token = out.stdout.strip()
        self.assertTrue(token.startswith("lifl1."), out.stdout)
        rng = np.random.default_rng(3)
        tensors, exact = random_update(rng)
        update = os.path.join(self.platform.tmp.name, "u.safetensors")
        with open(update, "wb") as f:
            f.write(encode_safetensors(tensors))
        refused = lifl_cli("push", "--job", "cli", "--file", update, "--client", "c9", "--url", url,
                           "--round", "0", check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("unauthorized", refused.stderr)
        env_push = lifl_cli("push", "--job", "cli", "--file", update, "--client", "c9", "--url", url,
                            "--token", token)
        self.assertIn('"accepted":true', env_push.stdout.replace(" ", ""))
        self.assertEqual(self.admin.wait_round("cli", 1, timeout=60)["round"], 1)
        model, _ = self.admin.pull("cli")
        assert_model_equal(self, model, fedavg([(1, exact)]))


class RateLimit(AuthTestCase):
    config = "security:\n  client_rate: 2\n  client_burst: 2\n"

    def test_a_client_over_its_rate_gets_429_and_others_do_not(self):
        self.admin.create_job(job_spec("r", clients=100, rounds=1))
        tok = {c: self.admin.create_token("r", c) for c in ("fast", "other")}
        rng = np.random.default_rng(9)
        fast = self.client(tok["fast"])
        body = encode_safetensors(random_update(rng)[0])
        # Each accepted update needs its own ce-source in a round: the rate counts requests,
        # so the fast client's third request in a burst is refused before its admission.
        self.assertTrue(fast.push_raw("r", body, "fast", ce_id="a")["accepted"])
        self.assertTrue(fast.push_raw("r", body, "fast", ce_id="a")["duplicate"])
        status, headers, data = fast._request(
            "POST", "/v1/jobs/r/updates", body,
            {"ce-specversion": "1.0", "ce-type": "dev.lifl.update", "ce-id": "a", "ce-source": "fast",
             "ce-round": "0", "ce-numexamples": "1", "Content-Type": "application/octet-stream"})
        self.assertEqual(status, 429)
        self.assertEqual(json.loads(data)["error"], "rate_limited")
        self.assertGreaterEqual(int(headers["retry-after"]), 1)
        other = self.client(tok["other"])
        self.assertTrue(other.push_raw("r", body, "other", ce_id="b")["accepted"])
        time.sleep(1.1)  # 2 a second: the bucket has refilled
        self.assertTrue(fast.push_raw("r", body, "fast", ce_id="a", retries=0)["duplicate"])
        self.assertEqual(self.admin.job("r")["received"], 2, "each accepted update counted once")


class BadSecurityConfig(unittest.TestCase):
    def test_bad_values_stop_lifl_up_with_a_clear_error(self):
        for bad, needle in (("security:\n  client_rate: -1\n", "client_rate"),
                            ("security:\n  client_burst: 0\n", "client_burst"),
                            ("security:\n  token_ttl_seconds: 0\n", "token_ttl_seconds"),
                            ("security:\n  autth: true\n", "security.autth")):
            with self.subTest(bad=bad):
                with self.assertRaises(Exception) as ctx:
                    Platform(config=bad).stop()
                self.assertIn(needle, str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
