"""The LLM stages on the nodes of a cluster (docs/llm.md "In a cluster"): a controller and
three agents in network namespaces; agents a and b serve a random model (`lifl agent --model`),
c serves none. Every gateway answers POST /v1/completions: a node without the model relays the
request to a node that serves it, the one with the fewest completions in flight, and passes the
answer back as it comes (an event stream event by event). Checked against the CPU engine run
directly (`lifl model run`): relayed greedy completions, streamed or not, alone or 8 at once,
are the same tokens; a node that serves the model keeps its requests; bad requests get API.md's
JSON errors from whichever node finds them; a node killed with kill -9 loses no request sent
after it died, and once no node serves the model the answer is 404."""
import concurrent.futures
import json
import os
import re
import shutil
import tempfile
import time
import unittest
import urllib.request

from lifl_cluster import Cluster, http_json
from lifl_harness import failed_so_far, lifl_cli, model_run
from llm_api_test import post


def generated_tokens(url, context=None):
    """lifl_llm_generated_tokens_total of a node's /metrics (0 before its first completion)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10, context=context) as r:
        text = r.read().decode()
    m = re.search(r"^lifl_llm_generated_tokens_total(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def stream_tokens(test, data):
    """The token ids of an event stream's events, after checking it ends with [DONE]."""
    events = [line[len("data: "):] for line in data.split("\n\n") if line.startswith("data: ")]
    test.assertEqual(events[-1], "[DONE]", data)
    chunks = [json.loads(e) for e in events[:-1]]
    test.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
    return [t for c in chunks for t in c["choices"][0]["token_ids"]]


def assert_streams(test, url, model):
    """A streamed greedy completion at `url`: one event a token, then the finish event and
    [DONE]; the tokens `lifl model run` gives."""
    prompt = [1, 2, 3, 4]
    status, ctype, data = post(url, {"prompt": prompt, "max_tokens": 9, "temperature": 0,
                                     "stream": True})
    test.assertEqual((status, ctype), (200, "text/event-stream"), data)
    test.assertEqual(stream_tokens(test, data), model_run(model, prompt, 9)[0])
    test.assertEqual(data.count("data: "), 9 + 2, "9 tokens, the finish event and [DONE]")


def write_model(folder):
    model = os.path.join(folder, "tiny")
    lifl_cli("model", "generate", "--dir", model, "--layers", "2", "--vocab", "320", "--seed", "9",
             "--max-positions", "256")
    return model


def wait_models(test, cluster, served_by, timeout=10):
    """Waits until the controller lists model "tiny" as served by exactly `served_by`, and the
    agents have heard it at a heartbeat since."""
    deadline = time.monotonic() + timeout
    while True:
        listed = http_json(cluster.controller.url + "/v1/models", context=cluster.tls,
                           token=cluster.admin_token)
        nodes = sorted(n["node"] for m in listed["data"] if m["id"] == "tiny" for n in m["nodes"])
        if nodes == sorted(served_by):
            time.sleep(1.0)  # > 3 heartbeats: every agent has the routes
            return listed
        test.assertLess(time.monotonic(), deadline, f"the model's nodes: {listed}")
        time.sleep(0.1)


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("ip"), "needs root and iproute2 (netns)")
class ClusterLlm(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = write_model(cls.tmp.name)
        serve = ["--model", cls.model, "--model-decode-instances", "1"]
        cls.cluster = Cluster(agent_args={"a": serve, "b": serve}, warm_pool=3)

    @classmethod
    def tearDownClass(cls):
        cls.cluster.close()
        cls.tmp.cleanup()

    def setUp(self):
        self.listed = wait_models(self, self.cluster, ["a", "b"])

    def tearDown(self):
        if failed_so_far(self):
            print("\n" + self.cluster.logs())

    def url(self, node):
        return self.cluster.agents[node].url

    def test_the_controller_lists_the_model_and_its_nodes(self):
        (model,) = self.listed["data"]
        self.assertEqual((self.listed["object"], model["id"], model["object"]), ("list", "tiny", "model"))
        self.assertEqual(sorted(n["url"] for n in model["nodes"]), sorted([self.url("a"), self.url("b")]))
        # Every gateway lists the models its completions reach: its own, or those it relays to.
        for node in "abc":
            listed = http_json(self.url(node) + "/v1/models")
            self.assertEqual([(m["id"], m["object"]) for m in listed["data"]], [("tiny", "model")], node)

    def test_a_node_without_the_model_relays_greedy_completions(self):
        prompt = [5, 17, 200, 3, 99, 42]
        status, ctype, data = post(self.url("c"), {"prompt": prompt, "max_tokens": 12, "temperature": 0})
        self.assertEqual((status, ctype), (200, "application/json"), data)
        got = json.loads(data)
        self.assertEqual(got["model"], "tiny")
        self.assertEqual(got["choices"][0]["token_ids"], model_run(self.model, prompt, 12)[0])
        self.assertEqual(got["usage"]["completion_tokens"], 12)
        # Naming the model goes the same way.
        status, _, data = post(self.url("c"), {"model": "tiny", "prompt": prompt, "max_tokens": 12,
                                               "temperature": 0})
        self.assertEqual(json.loads(data)["choices"][0]["token_ids"], got["choices"][0]["token_ids"])

    def test_a_relayed_stream_passes_every_event(self):
        assert_streams(self, self.url("c"), self.model)

    def test_concurrent_relayed_requests_spread_over_the_serving_nodes(self):
        before = {n: generated_tokens(self.url(n)) for n in "ab"}
        prompts = [[i + 1] * (i + 2) for i in range(8)]
        lengths = [4 + i for i in range(8)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda pl: post(self.url("c"), {
                "prompt": pl[0], "max_tokens": pl[1], "temperature": 0}, timeout=120),
                zip(prompts, lengths)))
        for (status, _, data), prompt, n in zip(results, prompts, lengths):
            self.assertEqual(status, 200, data)
            self.assertEqual(json.loads(data)["choices"][0]["token_ids"], model_run(self.model, prompt, n)[0])
        served = {n: generated_tokens(self.url(n)) - before[n] for n in "ab"}
        self.assertEqual(sum(served.values()), sum(lengths))
        self.assertTrue(all(v > 0 for v in served.values()), f"tokens generated per node: {served}")

    def test_a_node_that_serves_the_model_keeps_its_requests(self):
        before = {n: generated_tokens(self.url(n)) for n in "ab"}
        for i in range(3):
            status, _, data = post(self.url("a"), {"prompt": [7, i], "max_tokens": 5, "temperature": 0})
            self.assertEqual(status, 200, data)
        self.assertEqual(generated_tokens(self.url("a")) - before["a"], 15)
        self.assertEqual(generated_tokens(self.url("b")) - before["b"], 0)

    def test_bad_requests_get_json_errors_wherever_they_are_found(self):
        cases = [
            # found by the relaying node
            ("c", "{not json", 400, "invalid_request"),
            ("c", {"model": "other", "prompt": [1], "max_tokens": 2}, 404, "model_not_found"),
            # found by the node that serves the model, passed back as it answered
            ("c", {"prompt": [1, 2], "max_tokens": -1}, 400, "invalid_request"),
            ("c", {"prompt": [100000], "max_tokens": 2}, 400, "invalid_request"),
            ("a", {"model": "other", "prompt": [1], "max_tokens": 2}, 404, "model_not_found"),
        ]
        for node, body, code, error in cases:
            with self.subTest(node=node, body=body):
                status, ctype, data = post(self.url(node), body)
                self.assertEqual((status, ctype), (code, "application/json"), data)
                self.assertEqual(json.loads(data)["error"], error, data)
        # Nothing was disturbed: the next relayed completion is exact.
        status, _, data = post(self.url("c"), {"prompt": [3, 3], "max_tokens": 4, "temperature": 0})
        self.assertEqual(json.loads(data)["choices"][0]["token_ids"], model_run(self.model, [3, 3], 4)[0])


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("ip"), "needs root and iproute2 (netns)")
class ClusterLlmFailover(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.model = write_model(self.tmp.name)

    def tearDown(self):
        if failed_so_far(self):
            print("\n" + self.cluster.logs())
        self.cluster.close()
        self.tmp.cleanup()

    def test_a_killed_node_loses_no_later_request_and_none_left_is_404(self):
        serve = ["--model", self.model]
        self.cluster = c = Cluster(agent_args={"a": serve, "b": serve}, warm_pool=3)
        wait_models(self, c, ["a", "b"])
        c.agents["a"].kill()
        # At once, before the controller has noticed: a refuses the connection, b answers.
        for i in range(4):
            status, _, data = post(c.agents["c"].url, {"prompt": [i, 5], "max_tokens": 6, "temperature": 0})
            self.assertEqual(status, 200, data)
            self.assertEqual(json.loads(data)["choices"][0]["token_ids"], model_run(self.model, [i, 5], 6)[0])
        wait_models(self, c, ["b"])
        c.agents["b"].kill()
        # Until the controller notices, no node answers (503); then none serves the model (404).
        seen = []
        deadline = time.monotonic() + 15
        while not seen or seen[-1][0] != 404:
            self.assertLess(time.monotonic(), deadline, f"answers: {seen}")
            status, ctype, data = post(c.agents["c"].url, {"prompt": [1], "max_tokens": 2}, timeout=20)
            self.assertEqual(ctype, "application/json", data)
            seen.append((status, json.loads(data)["error"]))
            time.sleep(0.2)
        self.assertTrue(set(seen) <= {(503, "model_unavailable"), (404, "no_model")}, seen)


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("ip"), "needs root and iproute2 (netns)")
class ClusterLlmTls(unittest.TestCase):
    def test_a_completion_is_relayed_over_mutual_tls(self):
        with tempfile.TemporaryDirectory() as tmp:
            model = write_model(tmp)
            cluster = Cluster(nodes=("a", "b"), tls=True, warm_pool=3, agent_args={"a": ["--model", model]})
            try:
                wait_models(self, cluster, ["a"])
                status, ctype, data = post(cluster.agents["b"].url, {"prompt": [9, 8, 7], "max_tokens": 7,
                                                                     "temperature": 0, "stream": True},
                                           context=cluster.tls)
                self.assertEqual((status, ctype), (200, "text/event-stream"), data)
                self.assertEqual(stream_tokens(self, data), model_run(model, [9, 8, 7], 7)[0])
            except BaseException:
                print("\n" + cluster.logs())
                raise
            finally:
                cluster.close()


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("ip"), "needs root and iproute2 (netns)")
class ClusterLlmAuth(unittest.TestCase):
    def test_a_relayed_completion_carries_the_callers_credential(self):
        # security.auth everywhere, the agents holding the admin credential: a completion at c
        # needs it there, and is relayed with it to a, which checks it again.
        with tempfile.TemporaryDirectory() as tmp:
            model = write_model(tmp)
            cluster = Cluster(nodes=("a", "c"), auth=True, agent_admin=True, warm_pool=3,
                              agent_args={"a": ["--model", model]})
            try:
                wait_models(self, cluster, ["a"])
                body = {"prompt": [4, 4, 2], "max_tokens": 5, "temperature": 0}
                status, _, data = post(cluster.agents["c"].url, body, token=cluster.admin_token)
                self.assertEqual(status, 200, data)
                self.assertEqual(json.loads(data)["choices"][0]["token_ids"], model_run(model, [4, 4, 2], 5)[0])
                client = cluster.client.create_token("some-job", "c1")
                for token, code, error in ((None, 401, "unauthorized"), ("lifl1.forged", 401, "unauthorized"),
                                           (client, 403, "forbidden")):
                    with self.subTest(token=token):
                        status, _, data = post(cluster.agents["c"].url, body, token=token)
                        self.assertEqual((status, json.loads(data)["error"]), (code, error), data)
            except BaseException:
                print("\n" + cluster.logs())
                raise
            finally:
                cluster.close()


if __name__ == "__main__":
    unittest.main()
