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

import numpy as np
import yaml

from lifl_harness import Platform, assert_model_equal, fedavg, job_spec, random_update

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
            client = p.client
            client.create_job(job_spec("priv", clients=12, rounds=1))
            rng = np.random.default_rng(4)
            updates = []
            for c in range(12):
                tensors, exact = random_update(rng)
                n = int(rng.integers(1, 100))
                self.assertEqual(client.push("priv", tensors, client=f"c{c}", num_examples=n,
                                             round_=0), {"accepted": True, "round": 0})
                updates.append((n, exact))
            self.assertEqual(client.wait_round("priv", 1, timeout=60)["round"], 1)
            model, _ = client.pull("priv")
            assert_model_equal(self, model, fedavg(updates))
        finally:
            p.stop()

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
