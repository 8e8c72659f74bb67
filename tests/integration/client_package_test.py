"""The Python client as a user installs it: `pip install ./clients/python` offline into a
fresh virtual environment (numpy from the system), then used from that environment against a
running `lifl up`; and its retries, which resend an update with the same ce-id after a 503
or a lost connection, checked against a real HTTP server on loopback that fails on purpose."""
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import unittest

import numpy as np

from lifl_client import Client, LiflError
from lifl_harness import MODEL, PlatformTestCase, job_spec

CLIENT_DIR = os.path.join(os.path.dirname(__file__), "../../clients/python")

USE = """
import sys, numpy as np, lifl_client
assert lifl_client.__file__.startswith(sys.prefix), lifl_client.__file__
c = lifl_client.Client(sys.argv[1])
rng = np.random.default_rng(1)
for i in range(2):
    c.push("pkg", {k: np.full(s, i + 1, np.float32) for k, s in %r.items()}, client=f"u{i}",
           num_examples=1, round_=0)
c.wait_round("pkg", 1, timeout=30)
model, round_ = c.pull("pkg")
print(round_, float(model["fc.bias"][0]))
""" % (MODEL,)


class InstalledPackage(PlatformTestCase):
    def test_pip_install_offline_and_use(self):
        self.client.create_job(job_spec("pkg", clients=2, rounds=1))
        with tempfile.TemporaryDirectory() as d:
            venv = os.path.join(d, "venv")
            subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv],
                           check=True, timeout=120)
            pip = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "--no-index",
                                  "--no-cache-dir", CLIENT_DIR],
                                 capture_output=True, text=True, timeout=300)
            self.assertEqual(pip.returncode, 0, pip.stdout + pip.stderr)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed one
            run = subprocess.run([os.path.join(venv, "bin", "python"), "-c", USE, self.platform.url],
                                 capture_output=True, text=True, timeout=120, env=env, cwd=d)
            self.assertEqual(run.returncode, 0, run.stderr)
            self.assertEqual(run.stdout.split(), ["1", "1.5"])  # mean of 1 and 2


class FlakyGateway(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first `failures` pushes, then 202; records each push's ce-id."""
    failures = 2
    seen: list = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        FlakyGateway.seen.append(self.headers["ce-id"])
        if len(FlakyGateway.seen) <= FlakyGateway.failures:
            body, status = {"error": "store_full", "detail": "retry later"}, 503
        else:
            body, status = {"accepted": True, "round": 0}, 202
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Retries(unittest.TestCase):
    def serve(self, failures):
        FlakyGateway.failures, FlakyGateway.seen = failures, []
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyGateway)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.shutdown)
        return Client(f"http://127.0.0.1:{server.server_address[1]}", timeout=5)

    def test_503_is_retried_with_the_same_ce_id(self):
        c = self.serve(failures=2)
        reply = c.push("j", {"w": np.zeros(3, np.float32)}, client="a", round_=0)
        self.assertEqual(reply, {"accepted": True, "round": 0})
        self.assertEqual(len(FlakyGateway.seen), 3)
        self.assertEqual(len(set(FlakyGateway.seen)), 1, "every attempt carries the same ce-id")

    def test_retries_are_bounded(self):
        c = self.serve(failures=10)
        with self.assertRaises(LiflError) as e:
            c.push("j", {"w": np.zeros(3, np.float32)}, client="a", round_=0)
        self.assertEqual(e.exception.status, 503)
        self.assertEqual(len(FlakyGateway.seen), 4)  # the first try and 3 retries


if __name__ == "__main__":
    unittest.main()
