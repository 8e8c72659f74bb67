"""HTTPS between the nodes of a cluster (issue 8, docs/security.md): a controller and three
agents in network namespaces, every one speaking HTTPS only and asking its callers for a
certificate of the cluster's CA (mTLS), with credentials on as well. Certificates are made by
the test (`cryptography`), each node's for its own address. A round over the three gateways
gives numpy's exact FedAvg, so registration, admissions, reports, partials between agents and
the controller's commands all went over verified TLS; plain HTTP, callers without a
certificate of the CA, and callers that do not trust it are refused; an agent that does not
trust the controller, or whose certificate the controller does not trust, never joins, and
joins once its files are right; bad TLS settings stop the controller with the key named."""
import os
import shutil
import ssl
import subprocess
import time
import unittest
import urllib.error
import urllib.request

import numpy as np

from lifl_certs import plain_http_answer
from lifl_client import Client
from lifl_cluster import Cluster, Process, http_json
from lifl_harness import LIFL_BIN, assert_model_equal, failed_so_far, fedavg, job_spec, random_update

MODEL = {"dense.weight": (40, 50), "dense.bias": (50,)}


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("ip"), "needs root and iproute2 (netns)")
class ClusterTls(unittest.TestCase):
    def setUp(self):
        self.cluster = Cluster(auth=True, tls=True, warm_pool=3)

    def tearDown(self):
        if failed_so_far(self):
            print("\n" + self.cluster.logs())
        self.cluster.close()

    def test_a_round_across_nodes_over_mutual_tls_is_exact(self):
        c = self.cluster
        nodes = http_json(c.controller.url + "/v1/nodes", token=c.admin_token, context=c.tls)
        self.assertEqual(sorted(n["url"] for n in nodes), sorted(a.url for a in c.agents.values()))
        self.assertTrue(all(n["url"].startswith("https://") for n in nodes), nodes)
        c.client.create_job(job_spec("tls", clients=12, rounds=2, fan_in=4, model=MODEL, deadline_seconds=120))
        rng = np.random.default_rng(31)
        for rnd in range(2):
            updates = []
            for i in range(12):
                tensors, exact = random_update(rng, MODEL)
                n = int(rng.integers(1, 100))
                gateway = Client(c.agents["abc"[i % 3]].url, token=c.client.create_token("tls", f"c{i}"),
                                 tls=c.tls)
                self.assertTrue(gateway.push("tls", tensors, client=f"c{i}", num_examples=n, round_=rnd)["accepted"])
                gateway.close()
                updates.append((n, exact))
            status = c.client.wait_round("tls", rnd + 1, timeout=60)
            self.assertEqual((status["history"][rnd]["clients"], status["lost"]), (12, []), status)
            # Every node serves the new model: the controller copied it from the root over TLS.
            for node in "abc":
                reader = Client(c.agents[node].url, token=c.client.create_token("tls", "reader"), tls=c.tls)
                got, r = self._pull_round(reader, "tls", rnd + 1)
                reader.close()
                self.assertEqual(r, rnd + 1)
                assert_model_equal(self, got, fedavg(updates))

    def _pull_round(self, reader, job, round_, timeout=20):
        """The model of `round_` from a node (copied there after the round; bounded wait)."""
        deadline = time.monotonic() + timeout
        while True:
            got, r = reader.pull(job)
            if r >= round_ or time.monotonic() > deadline:
                return got, r
            time.sleep(0.05)

    def test_callers_without_a_certificate_of_the_cluster_ca_are_refused(self):
        c = self.cluster
        for name, process in (("controller", c.controller), ("agent a", c.agents["a"])):
            self.assertFalse(plain_http_answer(process.host, process.port).startswith(b"HTTP/"), name)
            for context, why in ((c.tls_context(cert=None), "no client certificate"),
                                 (c.tls_context(cert="foreign"), "a foreign CA's certificate"),
                                 (c.tls_context(trust=c.certs["foreign_ca"]), "does not trust the CA")):
                with self.assertRaises((ssl.SSLError, ConnectionResetError, urllib.error.URLError),
                                       msg=f"{name}: {why}"):
                    urllib.request.urlopen(process.url + "/v1/nodes", timeout=5, context=context).read()
            # The same request with the cluster's client certificate is answered.
            self.assertEqual(urllib.request.urlopen(process.url + "/readyz", timeout=5, context=c.tls).status, 200)
        # Nothing refused above reached the node registry.
        self.assertEqual(len(c.wait_nodes(3)), 3)

    def test_an_agent_joins_only_with_trust_both_ways(self):
        c = self.cluster
        host = c.controller.host  # a fourth agent in the test's namespace, beside the controller
        folder = os.path.join(c.tmp, "certs")
        store = f"/dev/shm/lifl-test-{c.tag}-d"
        c.store_paths.append(store)

        def start_agent(attempt, ca, cert):
            config = os.path.join(c.tmp, f"agent-d{attempt}.yaml")
            with open(config, "w") as f:
                f.write(f"store:\n  path: {store}\n  bytes: {64 << 20}\nfunctions:\n  warm_pool: 0\n"
                        f"security:\n  auth: true\n"
                        f"  cluster_token_file: {c.tmp}/controller/auth/cluster.token\n"
                        + c.agent_tls_config(*cert, ca=ca))
            args = [LIFL_BIN, "agent", "--controller", c.controller.url, "--name", "d", "--bind", host,
                    "--router", "userspace", "--config", config, "--data-dir", os.path.join(c.tmp, "data-d")]
            # Its readiness is asked with the client's certificate, trusting its gateway's CA.
            gateway_ca = c.certs["foreign_ca"] if cert == c.certs["foreign"] else c.certs["ca"]
            return Process(f"agent-d{attempt}", args, host, c.tmp, tls=c.tls_context(trust=gateway_ca))

        def registered():
            nodes = http_json(c.controller.url + "/v1/nodes", token=c.admin_token, context=c.tls)
            return any(n["name"] == "d" for n in nodes)

        own = c.certs["controller"]  # issued for the test namespace's address, by the cluster's CA
        for attempt, (ca, cert) in enumerate(((c.certs["foreign_ca"], own),  # does not trust the controller
                                              (c.certs["ca"], c.certs["foreign"]))):  # not trusted by it
            agent = start_agent(attempt, ca, cert)
            try:
                time.sleep(2)  # several registration attempts (one a second)
                self.assertIsNone(agent.proc.poll(), agent.log_tail())
                self.assertFalse(registered(), f"attempt {attempt}: the agent joined")
            finally:
                agent.stop()
        agent = start_agent(2, c.certs["ca"], own)
        try:
            deadline = time.monotonic() + 15
            while not registered():
                self.assertLess(time.monotonic(), deadline, agent.log_tail())
                time.sleep(0.1)
        finally:
            agent.stop()

    def test_bad_tls_settings_stop_the_controller_with_the_key_named(self):
        missing = os.path.join(self.cluster.tmp, "missing.pem")
        cert, key = self.cluster.certs["controller"]
        for tls, needle in ((f"  cert_file: {missing}\n", "go together"),
                            (f"  cert_file: {missing}\n  key_file: {key}\n", "tls.cert_file"),
                            (f"  cert_file: {cert}\n  key_file: {missing}\n", "tls.key_file"),
                            (f"  cert_file: {cert}\n  key_file: {key}\n  client_ca_file: {missing}\n",
                             "tls.client_ca_file"),
                            (f"  client_ca_file: {cert}\n", "mTLS is TLS"),
                            ("  certfile: x\n", "tls.certfile")):
            config = os.path.join(self.cluster.tmp, "bad.yaml")
            with open(config, "w") as f:
                f.write("tls:\n" + tls)
            r = subprocess.run([LIFL_BIN, "controller", "--port", "0", "--config", config,
                                "--data-dir", os.path.join(self.cluster.tmp, "bad")],
                               capture_output=True, text=True, timeout=30)
            self.assertNotEqual(r.returncode, 0, tls)
            self.assertIn(needle, r.stderr + r.stdout, tls)
            self.assertIn("invalid_config", r.stderr + r.stdout, tls)


if __name__ == "__main__":
    unittest.main()
