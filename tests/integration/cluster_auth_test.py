"""Credentials across nodes (issue 8, docs/security.md): a controller and three agents in
network namespaces, all with security.auth. The controller signs client tokens and its jobs
API needs the admin credential; agents check client tokens with the controller's public key
(given at registration) and refuse node-to-node calls without the cluster credential; the
agents' own calls carry it. A round over the three gateways, with tokens, is numpy's exact
FedAvg; every refusal leaves it untouched."""
import json
import os
import shutil
import unittest
import urllib.error
import urllib.request

import numpy as np

from lifl_client import Client, LiflError
from lifl_cluster import Cluster, sh
from lifl_harness import assert_model_equal, failed_so_far, fedavg, job_spec, random_update

MODEL = {"dense.weight": (40, 50), "dense.bias": (50,)}


def status_of(url, method="GET", token=None, body=None):
    request = urllib.request.Request(url, method=method, data=body,
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("ip"), "needs root and iproute2 (netns)")
class ClusterAuth(unittest.TestCase):
    def setUp(self):
        self.cluster = Cluster(auth=True, warm_pool=3)

    def tearDown(self):
        if failed_so_far(self):
            print("\n" + self.cluster.logs())
        self.cluster.close()

    def expect_error(self, status, fn):
        with self.assertRaises(LiflError) as ctx:
            fn()
        self.assertEqual(ctx.exception.status, status, ctx.exception.detail)

    def test_a_round_across_nodes_with_credentials(self):
        c = self.cluster
        anonymous = Client(c.controller.url)
        self.addCleanup(anonymous.close)
        spec = job_spec("sec", clients=12, rounds=1, fan_in=4, model=MODEL, deadline_seconds=120)
        self.expect_error(401, lambda: anonymous.create_job(spec))
        # Through an agent's gateway the jobs API goes to the controller, credential and all.
        through_agent = Client(c.agents["b"].url)
        self.addCleanup(through_agent.close)
        self.expect_error(401, lambda: through_agent.create_job(spec))
        self.assertEqual(c.client.create_job(spec)["id"], "sec")
        admin_via_agent = Client(c.agents["b"].url, token=c.admin_token)
        self.addCleanup(admin_via_agent.close)
        self.assertEqual(admin_via_agent.job("sec")["id"], "sec")
        tokens = {i: c.client.create_token("sec", f"c{i}") for i in range(12)}
        other = c.client.create_token("not-sec", "c0")
        token_via_agent = admin_via_agent.create_token("sec", "c99")
        self.assertTrue(token_via_agent.startswith("lifl1."))

        rng = np.random.default_rng(17)
        updates = []
        for i in range(12):
            tensors, exact = random_update(rng, MODEL)
            node = "abc"[i % 3]
            n = int(rng.integers(1, 100))
            if i < 3:  # refused first at that gateway, from the headers: nothing counted
                # (A member holds no admin credential unless configured: to it the admin's is
                # just an unknown token, 401.)
                for bad, status in ((None, 401), (other, 403), (tokens[(i + 1) % 12], 403), (c.admin_token, 401)):
                    client = Client(c.agents[node].url, token=bad)
                    self.expect_error(status, lambda: client.push("sec", tensors, client=f"c{i}", num_examples=n,
                                                                   round_=0))
                    client.close()
            gateway = Client(c.agents[node].url, token=tokens[i])
            self.assertTrue(gateway.push("sec", tensors, client=f"c{i}", num_examples=n, round_=0)["accepted"])
            gateway.close()
            updates.append((n, exact))
        status = c.client.wait_round("sec", 1, timeout=60)
        self.assertEqual(status["history"][0]["clients"], 12, status)
        reader = Client(c.agents["a"].url, token=tokens[0])
        self.addCleanup(reader.close)
        got, r = reader.pull("sec")
        self.assertEqual(r, 1)
        assert_model_equal(self, got, fedavg(updates))

    def test_a_partial_goes_round_a_cut_link_with_credentials(self):
        # The controller relays a member's partial to the root; under auth the relay must
        # carry the cluster credential, or the root refuses it and the round waits forever.
        c = self.cluster
        c.client.create_job(job_spec("cut", clients=6, rounds=1, fan_in=4, model=MODEL, deadline_seconds=120))
        root = c.client.job("cut")["plan"]["root"]
        member = next(n for n in "abc" if n != root)
        ip = {n: c.agents[n].host for n in "abc"}
        routes = [(root, member), (member, root)]
        for a, b in routes:
            sh("ip", "netns", "exec", c.ns(a), "ip", "route", "add", "blackhole", f"{ip[b]}/32")
        try:
            rng = np.random.default_rng(23)
            updates = []
            for i in range(6):
                tensors, exact = random_update(rng, MODEL)
                gateway = Client(c.agents["abc"[i % 3]].url, token=c.client.create_token("cut", f"c{i}"))
                self.assertTrue(gateway.push("cut", tensors, client=f"c{i}", num_examples=i + 1, round_=0)["accepted"])
                gateway.close()
                updates.append((i + 1, exact))
            status = c.client.wait_round("cut", 1, timeout=60)
        finally:
            for a, b in routes:
                sh("ip", "netns", "exec", c.ns(a), "ip", "route", "del", "blackhole", f"{ip[b]}/32", check=False)
        self.assertEqual((status["history"][0]["clients"], status["lost"]), (6, []), status)
        reader = Client(c.agents[root].url, token=c.client.create_token("cut", "reader"))
        self.addCleanup(reader.close)
        got, _ = reader.pull("cut")
        assert_model_equal(self, got, fedavg(updates))

    def test_node_to_node_calls_need_the_cluster_credential(self):
        c = self.cluster
        c.client.create_job(job_spec("n2n", clients=3, rounds=1, fan_in=4, model=MODEL))
        agent = c.agents["a"].url
        controller = c.controller.url
        # An agent's cluster endpoints: no credential, a client token, the admin credential.
        token = c.client.create_token("n2n", "c0")
        for credential, expected in ((None, 401), (token, 403), (c.admin_token, 403)):
            self.assertEqual(status_of(f"{agent}/v1/cluster/jobs/n2n", token=credential), expected)
            self.assertEqual(status_of(f"{agent}/v1/cluster/jobs/n2n/partials?round=0&epoch=0&from=x&partial=1",
                                       "POST", credential, b"x" * 64), expected)
        # The controller's node calls: a forged registration or heartbeat is refused.
        forged = json.dumps({"name": "evil", "url": "http://127.0.0.1:1"}).encode()
        self.assertEqual(status_of(f"{controller}/v1/nodes", "POST", None, forged), 401)
        self.assertEqual(status_of(f"{controller}/v1/nodes", "POST", c.admin_token, forged), 403)
        self.assertEqual(status_of(f"{controller}/v1/nodes/a/heartbeat", "POST", token, b"{}"), 403)
        self.assertEqual(status_of(f"{controller}/v1/cluster/admissions", "POST", None, b"{}"), 401)
        nodes = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{controller}/v1/nodes", headers={"Authorization": f"Bearer {c.admin_token}"}), timeout=5).read())
        self.assertEqual(sorted(n["name"] for n in nodes), ["a", "b", "c"], "no forged node registered")
        self.assertEqual(status_of(f"{controller}/v1/nodes"), 401)


if __name__ == "__main__":
    unittest.main(verbosity=2)
