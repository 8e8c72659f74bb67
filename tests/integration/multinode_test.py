"""Multi-node aggregation: a controller and three agents, each agent in its own network
namespace (veth pairs to a bridge, created and removed by the test), clients spread over the
three gateways. Checks the global model against numpy FedAvg (tolerance RTOL, see
lifl_harness), that only partials cross nodes (one per non-root node with updates, as
planned), that a killed agent's accepted updates are reported lost and the round completes
from the live nodes, and that a controller killed mid-round resumes without losing updates.
"""
import os
import shutil
import signal
import sys
import time
import unittest
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../support"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../clients/python"))

from lifl_client import LiflError  # noqa: E402
from lifl_cluster import Cluster, http_json  # noqa: E402
from lifl_harness import assert_model_equal, failed_so_far, fedavg, job_spec, random_update  # noqa: E402

MODEL = {"dense.weight": (200, 250), "dense.bias": (250,)}
ELEMENTS = 200 * 250 + 250


def partial_bytes_bound(clients):
    """Largest partial (data-plane/include/lifl/dataplane/partial.h): 64 B header, 16 B per
    input record and 8 B per client key (at most `clients` each), padded to 64, then fp32."""
    return (64 + 24 * clients + 63) // 64 * 64 + 4 * ELEMENTS


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("ip"), "needs root and iproute2 (netns)")
class MultiNodeTest(unittest.TestCase):
    def setUp(self):
        self.cluster = Cluster()
        seed = int(time.time() * 1000) % 100000
        print(f"{self.id()}: seed {seed}")
        self.rng = np.random.default_rng(seed)

    def tearDown(self):
        if failed_so_far(self):
            print("\n" + self.cluster.logs())
        self.cluster.close()

    def push_all(self, job, round_, assignments, updates):
        """assignments: [(client, node)]; updates: {client: (n, tensors, exact)}."""
        def push(item):
            client, node = item
            n, tensors, _ = updates[client]
            gateway = self.cluster.gateway(node)
            try:
                return gateway.push(job, tensors, client=client, num_examples=n, round_=round_)
            finally:
                gateway.close()
        with ThreadPoolExecutor(6) as pool:
            return list(pool.map(push, assignments))

    def make_updates(self, clients):
        out = {}
        for c in clients:
            tensors, exact = random_update(self.rng, MODEL)
            out[c] = (int(self.rng.integers(1, 100)), tensors, exact)
        return out

    def check_model_everywhere(self, job, round_, expected, nodes):
        for node in nodes:
            g = self.cluster.gateway(node)
            deadline = time.monotonic() + 20
            while True:  # a member fetches the model when the next round starts
                got, r = g.pull(job)
                if r >= round_ or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self.assertEqual(r, round_, f"node {node} serves round {r}")
            assert_model_equal(self, got, expected)
            g.close()

    def test_fedavg_across_three_nodes(self):
        c = self.cluster
        spec = job_spec("mn", clients=200, rounds=2, fan_in=8, model=MODEL, deadline_seconds=120)
        self.assertEqual(c.client.create_job(spec)["round"], 0)
        status = c.client.job("mn")
        plan = status["plan"]
        self.assertEqual(sum(plan["shares"].values()), 200)
        self.assertEqual(plan["cross_node_edges"], 2)
        self.assertEqual({n["node"] for n in plan["nodes"]}, {"a", "b", "c"})

        spreads = [lambda i: "abc"[i % 3], lambda i: "a" if i < 100 else ("b" if i < 160 else "c")]
        sent_before = 0
        for round_ in range(2):
            clients = [f"client-{i}" for i in range(200)]
            updates = self.make_updates(clients)
            order = list(self.rng.permutation(200))
            assignments = [(clients[i], spreads[round_](i)) for i in order]
            results = self.push_all("mn", round_, assignments, updates)
            self.assertTrue(all(r["accepted"] and r["round"] == round_ for r in results))
            status = c.client.wait_round("mn", round_ + 1, timeout=60)
            self.assertEqual(status["round"], round_ + 1, status)
            expected = fedavg([(n, exact) for n, _, exact in updates.values()])
            self.check_model_everywhere("mn", round_ + 1, expected, "abc")
            hist = status["history"][round_]
            self.assertEqual(hist["clients"], 200)
            self.assertAlmostEqual(hist["weight"], sum(n for n, _, _ in updates.values()), places=3)
            # Only partials cross nodes: one per non-root node, as planned.
            deadline = time.monotonic() + 10
            while True:  # heartbeats carry the agents' counters (every 0.3 s)
                nodes = http_json(c.controller.url + "/v1/nodes")
                partials = sum((n["stats"] or {}).get("cross_node_partials_sent", 0) for n in nodes)
                sent = sum((n["stats"] or {}).get("cross_node_bytes_sent", 0) for n in nodes)
                if partials >= 2 * (round_ + 1) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            time.sleep(0.7)  # and later heartbeats: nothing else may cross
            nodes = http_json(c.controller.url + "/v1/nodes")
            partials = sum((n["stats"] or {}).get("cross_node_partials_sent", 0) for n in nodes)
            sent = sum((n["stats"] or {}).get("cross_node_bytes_sent", 0) for n in nodes)
            edges = hist["cross_node_edges"]
            print(f"round {round_}: root {hist['root']}, {edges} cross-node edges planned, "
                  f"{partials} partials sent, {sent - sent_before} cross-node bytes "
                  f"(model {4 * ELEMENTS} B, 200 updates {200 * 4 * ELEMENTS} B)")
            self.assertEqual(partials, 2 * (round_ + 1))
            self.assertGreaterEqual(sent - sent_before, edges * 4 * ELEMENTS)
            self.assertLessEqual(sent - sent_before, edges * partial_bytes_bound(200))
            sent_before = sent
            if round_ == 0:
                # The next round is planned from where updates arrived.
                self.assertEqual(status["plan"]["shares"], {"a": 67, "b": 67, "c": 66})
        self.assertEqual(c.client.job("mn")["state"], "done")
        # Each agent exposes what it sent to other nodes; together it is what the controller saw.
        sent_metric = 0.0
        for agent in c.agents.values():
            with urllib.request.urlopen(agent.url + "/metrics", timeout=5) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith('lifl_cross_node_bytes_total{direction="sent"}'):
                        sent_metric += float(line.split()[-1])
        self.assertEqual(sent_metric, sent_before)

    def test_agent_killed_mid_round(self):
        c = self.cluster
        spec = job_spec("kill", clients=200, rounds=2, fan_in=8, model=MODEL, min_clients=100,
                        deadline_seconds=10)
        c.client.create_job(spec)
        root = c.client.job("kill")["plan"]["root"]
        victim = [n for n in "abc" if n != root][-1]
        live = [n for n in "abc" if n != victim]
        clients = [f"k{i}" for i in range(200)]
        updates = self.make_updates(clients)
        first = [(clients[i], "abc"[i % 3]) for i in range(150)]
        self.push_all("kill", 0, first, updates)
        self.assertEqual(c.client.job("kill")["received"], 150)
        c.agents[victim].kill()
        c.wait_nodes(2, timeout=15)
        status = c.client.job("kill")
        lost = [entry["client"] for entry in status["lost"]]
        on_victim = {cl for cl, node in first if node == victim}
        self.assertEqual(set(lost), on_victim)
        self.assertTrue(all(victim in e["reason"] for e in status["lost"]))
        self.assertEqual(status["received"], 100)
        # The rest of the clients push to the live gateways; the round closes at its deadline
        # with the updates of live nodes (150 >= min_clients).
        rest = [(clients[i], live[i % 2]) for i in range(150, 200)]
        self.push_all("kill", 0, rest, updates)
        status = c.client.wait_round("kill", 1, timeout=30)
        self.assertEqual(status["round"], 1, status)
        kept = [cl for cl, node in first + rest if node != victim]
        self.assertEqual(status["history"][0]["clients"], len(kept))
        self.assertEqual(status["history"][0]["closed"], "deadline")
        expected = fedavg([(updates[cl][0], updates[cl][2]) for cl in kept])
        self.check_model_everywhere("kill", 1, expected, live)
        # The next round is planned on the two live nodes only.
        self.assertEqual(set(status["plan"]["shares"]), set(live))
        clients = [f"k2-{i}" for i in range(200)]
        updates = self.make_updates(clients)
        self.push_all("kill", 1, [(cl, live[i % 2]) for i, cl in enumerate(clients)], updates)
        status = c.client.wait_round("kill", 2, timeout=30)
        self.assertEqual(status["state"], "done", status)
        expected = fedavg([(n, exact) for n, _, exact in updates.values()])
        self.check_model_everywhere("kill", 2, expected, live)

    def test_root_killed_mid_round(self):
        # The root node holds the top: the controller moves the root to a live node (a new
        # epoch); only the updates the lost root accepted are lost (each reported), the live
        # nodes keep theirs, and the round completes from them.
        c = self.cluster
        c.client.create_job(job_spec("root", clients=60, rounds=2, fan_in=8, model=MODEL,
                                     deadline_seconds=60))
        root = c.client.job("root")["plan"]["root"]
        live = [n for n in "abc" if n != root]
        clients = [f"r{i}" for i in range(60)]
        updates = self.make_updates(clients)
        first = [(cl, "abc"[i % 3]) for i, cl in enumerate(clients[:45])]
        self.push_all("root", 0, first, updates)
        c.agents[root].kill()
        c.wait_nodes(2, timeout=15)
        status = c.client.job("root")
        on_root = sorted(cl for cl, node in first if node == root)
        self.assertEqual(status["epoch"], 1, status)
        self.assertEqual(sorted(e["client"] for e in status["lost"]), on_root)
        self.assertTrue(all(root in e["reason"] for e in status["lost"]))
        self.assertEqual(status["received"], 45 - len(on_root))
        self.assertIn(status["plan"]["root"], live)
        # The new root runs the round's top beside its own subtree; kill that top too: a new
        # one takes over from what it held.
        new_root = status["plan"]["root"]
        deadline = time.monotonic() + 10
        while not c.local_status(new_root, "root")["cluster"]["top"]:
            self.assertLess(time.monotonic(), deadline, "the new root never started a top")
            time.sleep(0.05)
        top = c.local_status(new_root, "root")["cluster"]["top"]
        pid = next(i["pid"] for i in http_json(c.agents[new_root].url + "/v1/instances")
                   if i["id"] == top)
        os.kill(pid, signal.SIGKILL)
        while c.local_status(new_root, "root")["cluster"]["top"] in (0, top):
            self.assertLess(time.monotonic(), deadline, "the dead top was not replaced")
            time.sleep(0.05)
        # The lost clients push again, and the rest of the round arrives.
        rest = on_root + clients[45:]
        self.push_all("root", 0, [(cl, live[i % 2]) for i, cl in enumerate(rest)], updates)
        status = c.client.wait_round("root", 1, timeout=30)
        self.assertEqual(status["round"], 1, status)
        self.assertEqual(status["history"][0]["clients"], 60)
        expected = fedavg([(n, exact) for n, _, exact in updates.values()])
        self.check_model_everywhere("root", 1, expected, live)
        # The next round runs on the two live nodes.
        updates = self.make_updates(clients)
        self.push_all("root", 1, [(cl, live[i % 2]) for i, cl in enumerate(clients)], updates)
        status = c.client.wait_round("root", 2, timeout=30)
        self.assertEqual(status["state"], "done", status)
        expected = fedavg([(n, exact) for n, _, exact in updates.values()])
        self.check_model_everywhere("root", 2, expected, live)

    def test_root_killed_after_partials_reached_it(self):
        # The members' partials are at the root (its top is stopped, so it cannot publish)
        # when the root dies: members kept them and send them again to the new root, which
        # gets a top of its own; only the root's own updates are lost.
        c = self.cluster
        c.client.create_job(job_spec("kept", clients=30, rounds=1, fan_in=4, model=MODEL,
                                     deadline_seconds=60))
        root = c.client.job("kept")["plan"]["root"]
        live = [n for n in "abc" if n != root]
        top = c.local_status(root, "kept")["plan"]["instances"][-1]
        top_pid = next(i["pid"] for i in http_json(c.agents[root].url + "/v1/instances")
                       if i["id"] == top)
        os.kill(top_pid, signal.SIGSTOP)
        clients = [f"p{i}" for i in range(30)]
        updates = self.make_updates(clients)
        assignments = [(cl, "abc"[i % 3]) for i, cl in enumerate(clients)]
        self.push_all("kept", 0, assignments, updates)
        deadline = time.monotonic() + 20
        while not all(c.local_status(n, "kept")["cluster"]["partials_kept"] >= 1 for n in live):
            self.assertLess(time.monotonic(), deadline, "members' partials never reached the root")
            time.sleep(0.05)
        c.agents[root].kill()
        c.wait_nodes(2, timeout=15)
        status = c.client.wait_round("kept", 1, timeout=30)
        on_root = {cl for cl, node in assignments if node == root}
        self.assertEqual(status["round"], 1, status)
        self.assertEqual(sorted(e["client"] for e in status["lost"]), sorted(on_root))
        self.assertEqual(status["history"][0]["clients"], 30 - len(on_root))
        expected = fedavg([(updates[cl][0], updates[cl][2]) for cl in clients if cl not in on_root])
        self.check_model_everywhere("kept", 1, expected, live)

    def test_initial_model_and_delta_updates(self):
        # PUT at the controller: checked, kept as the round-0 checkpoint, and copied by every
        # node (a delta job's top needs it as the base); a bad model is refused.
        c = self.cluster
        spec = job_spec("delta", clients=12, rounds=1, fan_in=4, model=MODEL, update="delta")
        spec["model"].pop("init")
        c.client.create_job(spec)
        with self.assertRaises(LiflError) as bad:
            c.client.set_model("delta", {"dense.weight": np.zeros((2, 2), np.float32)})
        self.assertEqual(bad.exception.status, 422)
        base, base_exact = random_update(self.rng, MODEL)
        c.client.set_model("delta", base)
        clients = [f"d{i}" for i in range(12)]
        updates = self.make_updates(clients)
        self.push_all("delta", 0, [(cl, "abc"[i % 3]) for i, cl in enumerate(clients)], updates)
        status = c.client.wait_round("delta", 1, timeout=30)
        self.assertEqual(status["state"], "done", status)
        mean = fedavg([(n, exact) for n, _, exact in updates.values()])
        expected = {k: base_exact[k] + mean[k] for k in mean}
        self.check_model_everywhere("delta", 1, expected, "abc")

    def test_controller_restart_mid_round(self):
        c = self.cluster
        spec = job_spec("restart", clients=30, rounds=2, fan_in=4, model=MODEL, deadline_seconds=120)
        c.client.create_job(spec)
        clients = [f"r{i}" for i in range(30)]
        updates = self.make_updates(clients)
        self.push_all("restart", 0, [(cl, "abc"[i % 3]) for i, cl in enumerate(clients[:20])], updates)
        c.controller.kill()
        c.controller.start(port=c.controller.port)  # same address: the agents find it again
        c.wait_nodes(3, timeout=15)
        status = c.client.job("restart")
        self.assertEqual((status["round"], status["received"]), (0, 20), status)
        self.push_all("restart", 0, [(cl, "abc"[i % 3]) for i, cl in enumerate(clients[20:])], updates)
        status = c.client.wait_round("restart", 1, timeout=30)
        self.assertEqual(status["history"][0]["clients"], 30, status)
        self.assertEqual(status["lost"], [])
        expected = fedavg([(n, exact) for n, _, exact in updates.values()])
        self.check_model_everywhere("restart", 1, expected, "abc")
        # The controller keeps a checkpoint of each completed round's model.
        deadline = time.monotonic() + 10
        while not c.client.job("restart")["checkpoint"] and time.monotonic() < deadline:
            time.sleep(0.05)
        got, r = c.client.pull("restart")
        self.assertEqual(r, 1)
        assert_model_equal(self, got, expected)


if __name__ == "__main__":
    unittest.main(verbosity=2)
