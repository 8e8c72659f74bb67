"""The agent run as the DaemonSet of deploy/kustomize runs it (docs/kubernetes.md, "Security
model"): root with exactly the capabilities the manifest adds (BPF, NET_ADMIN) and
every other one out of its bounding set, through setpriv. It loads its BPF programs (the
ebpf router), routes descriptors and serves a round whose model equals numpy's FedAvg; its
function instances hold no capability at all. The capability set is read from the rendered
manifest, so that the test and the manifest cannot drift apart."""
import os
import subprocess
import time
import unittest

import yaml

from lifl_harness import Platform, exact_round, free_port, wait_readyz

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CAP_BITS = {"NET_ADMIN": 12, "BPF": 39}


def manifest_capabilities():
    text = subprocess.run(["kubectl", "kustomize",
                           os.path.join(ROOT, "deploy", "kustomize", "overlays", "production")],
                          capture_output=True, text=True, check=True, timeout=60).stdout
    for doc in yaml.safe_load_all(text):
        if doc and doc["kind"] == "DaemonSet":
            agent = doc["spec"]["template"]["spec"]["containers"][0]
            return sorted(agent["securityContext"]["capabilities"]["add"])
    raise AssertionError("no DaemonSet in the manifest")


def capabilities_of(pid):
    """CapEff and CapBnd of a process, as integers."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("CapEff", "CapBnd", "CapPrm"):
                fields[key] = int(value.strip(), 16)
    return fields


@unittest.skipUnless(os.geteuid() == 0, "SKIPPED: needs root (setpriv sets a root capability set)")
class LeastPrivilege(unittest.TestCase):
    def test_agent_with_the_manifests_capabilities_serves_a_round(self):
        caps = manifest_capabilities()
        self.assertEqual(caps, ["BPF", "NET_ADMIN"])
        mask = sum(1 << CAP_BITS[c] for c in caps)
        keep = ",".join("+" + c.lower() for c in caps)
        prefix = ["setpriv", f"--bounding-set=-all,{keep}", "--inh-caps=-all", "--"]
        p = Platform(router="ebpf", prefix=prefix)
        try:
            agent = capabilities_of(p.proc.pid)
            self.assertEqual(agent["CapEff"], mask, f"agent CapEff {agent['CapEff']:#x}")
            self.assertEqual(agent["CapBnd"], mask)
            self.assertIn("router ebpf", p.log_tail(50))
            instances = p.instances()
            self.assertGreater(len(instances), 0)
            # An instance drops its capabilities as it starts: each reaches none (bounded).
            for i in instances:
                deadline = time.monotonic() + 10
                while True:
                    held = capabilities_of(i["pid"])
                    if (held["CapEff"], held["CapPrm"]) == (0, 0):
                        break
                    self.assertLess(time.monotonic(), deadline, f"instance {i} holds {held}")
                    time.sleep(0.05)
            # A round through the eBPF router: 12 clients, the model against numpy.
            exact_round(self, p.client, "priv", clients=12, seed=4)
        finally:
            p.stop()

    def test_controller_as_the_manifests_non_root_user(self):
        # The controller's Deployment runs it as user 10001 with no capability: so here, and
        # it answers /readyz and its API.
        import json
        import tempfile
        import urllib.request
        port = free_port()
        with tempfile.TemporaryDirectory() as data:
            os.chown(data, 10001, 10001)
            proc = subprocess.Popen(
                ["setpriv", "--reuid=10001", "--regid=10001", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--", os.environ["LIFL_BIN"],
                 "controller", "--port", str(port), "--data-dir", data],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                url = f"http://127.0.0.1:{port}"
                wait_readyz(url, 30, "the controller", alive=lambda: proc.poll() is None)
                held = capabilities_of(proc.pid)
                self.assertEqual((held["CapEff"], held["CapBnd"]), (0, 0))
                with open(f"/proc/{proc.pid}/status") as f:
                    uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
                self.assertEqual(uid, "10001")
                # Its API and its data directory work as that user: the node and job lists.
                for path in ("/v1/nodes", "/v1/jobs"):
                    with urllib.request.urlopen(url + path, timeout=10) as r:
                        self.assertEqual(r.status, 200)
                        json.loads(r.read())
            finally:
                proc.terminate()
                proc.wait(timeout=30)

    def test_one_capability_short_the_agent_says_why(self):
        # Without CAP_BPF, or without CAP_NET_ADMIN, the eBPF router cannot load: `lifl up`
        # stops with an error naming it rather than running without its router. So neither
        # capability of the manifest is more than the agent needs.
        for kept in ("+net_admin", "+bpf"):
            with self.subTest(kept=kept):
                r = subprocess.run(["setpriv", f"--bounding-set=-all,{kept}", "--inh-caps=-all",
                                    "--", os.environ["LIFL_BIN"], "up", "--port", "0", "--router",
                                    "ebpf", "--data-dir", "/tmp/lifl-priv-test"],
                                   capture_output=True, text=True, timeout=60)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn("bpf_load_failed", r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()
