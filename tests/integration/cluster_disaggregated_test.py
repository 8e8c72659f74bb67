"""Prefill on one node, decode on another (docs/llm.md "Prefill and decode on different
nodes"): a controller and four agents in network namespaces; p and q run only the prefill
stage (`lifl agent --model DIR --model-role prefill`), d only the decode stage (`--model-role
decode`), c serves no model. A completion at d is prefilled on p or q (POST
/v1/cluster/llm/prefill), whose hand-off, the KV cache included, comes back over the network
into d's store, where d's decode stage runs it. Checked against the CPU engine run directly
(`lifl model run`): greedy and sampled completions, streamed or not, alone or six at once, at
d, at p (which relays to d) and at c, are the same tokens; bad requests get API.md's JSON
error of the node that finds them and disturb nothing; with p killed q prefills, and once
both are gone d answers 503."""
import concurrent.futures
import json
import os
import shutil
import tempfile
import time
import unittest
import urllib.error
import urllib.request

from cluster_llm_test import assert_streams, generated_tokens, write_model
from lifl_cluster import Cluster, http_json
from lifl_harness import failed_so_far, lifl_cli, model_run, picking_args
from llm_api_test import post


def wait_roles(cluster, roles, token=None, timeout=15):
    """Waits until the controller lists the model as served by `roles` ({node: role}), and the
    agents have heard it at a heartbeat since."""
    deadline = time.monotonic() + timeout
    while True:
        listed = http_json(cluster.controller.url + "/v1/models", token=token)
        if {n["node"]: n["role"] for m in listed["data"] for n in m["nodes"]} == roles:
            break
        assert time.monotonic() < deadline, f"the model's nodes: {listed}"
        time.sleep(0.1)
    time.sleep(1.0)  # > 3 heartbeats: every agent has the routes


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("ip"), "needs root and iproute2 (netns)")
class ClusterDisaggregated(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = write_model(cls.tmp.name)
        prefill = ["--model", cls.model, "--model-role", "prefill"]
        # d scales its decode stage up to 3 instances by requests in flight (one each at most
        # before another joins), and gives an added one back after 1 s idle.
        cls.cluster = Cluster(
            nodes=("p", "q", "d", "c"), warm_pool=4,
            agent_args={"p": prefill, "q": prefill,
                        "d": ["--model", cls.model, "--model-role", "decode",
                              "--model-decode-instances", "3"]},
            agent_functions={"d": {"scale_up_queue_depth": 1, "idle_seconds": 1}})
        wait_roles(cls.cluster, {"p": "prefill", "q": "prefill", "d": "decode"})

    @classmethod
    def tearDownClass(cls):
        cls.cluster.close()
        cls.tmp.cleanup()

    def tearDown(self):
        if failed_so_far(self):
            print("\n" + self.cluster.logs())

    def url(self, node):
        return self.cluster.agents[node].url

    def test_a_completion_at_the_decode_node_is_prefilled_on_the_prefill_node(self):
        prompt = [5, 17, 200, 3, 99, 42]
        before = {n: generated_tokens(self.url(n)) for n in "pqd"}
        status, ctype, data = post(self.url("d"), {"prompt": prompt, "max_tokens": 12,
                                                   "temperature": 0})
        self.assertEqual((status, ctype), (200, "application/json"), data)
        got = json.loads(data)
        self.assertEqual(got["choices"][0]["token_ids"], model_run(self.model, prompt, 12)[0])
        self.assertEqual(got["usage"], {"prompt_tokens": 6, "completion_tokens": 12,
                                        "total_tokens": 18})
        # d decoded (it has no prefill stage: the prompt's KV came from p or q), which
        # generated nothing.
        self.assertEqual(generated_tokens(self.url("d")) - before["d"], 12)
        for node in "pq":
            self.assertEqual(generated_tokens(self.url(node)), before[node], node)

    def test_sampled_completions_carry_the_generator_across(self):
        # The first token is drawn on p and the rest on d: the generator's state travels in
        # the hand-off, so a seed gives the tokens `lifl model run` draws on one machine.
        for i, settings in enumerate([{"temperature": 1.0},
                                      {"temperature": 0.9, "top_k": 30, "top_p": 0.8}]):
            prompt = [7, 8, 9 + i]
            status, _, data = post(self.url("d"), {"prompt": prompt, "max_tokens": 10,
                                                   "seed": 60 + i, **settings})
            self.assertEqual(status, 200, data)
            run = picking_args(settings, 60 + i)
            self.assertEqual(json.loads(data)["choices"][0]["token_ids"],
                             model_run(self.model, prompt, 10, *run)[0], settings)

    def test_a_stream_from_the_decode_node_passes_every_event(self):
        assert_streams(self, self.url("d"), self.model)

    def test_completions_at_the_prefill_node_and_elsewhere_go_to_the_decode_node(self):
        prompt = [11, 12, 13]
        expected = model_run(self.model, prompt, 8)[0]
        for node in "pc":
            before = generated_tokens(self.url("d"))
            status, _, data = post(self.url(node), {"prompt": prompt, "max_tokens": 8,
                                                    "temperature": 0})
            self.assertEqual(status, 200, (node, data))
            self.assertEqual(json.loads(data)["choices"][0]["token_ids"], expected, node)
            self.assertEqual(generated_tokens(self.url("d")) - before, 8, node)
        # Every gateway lists the model.
        for node in "pqdc":
            listed = http_json(self.url(node) + "/v1/models")
            self.assertEqual([m["id"] for m in listed["data"]], ["tiny"], node)

    def test_concurrent_completions_scale_the_decode_node_by_requests_in_flight(self):
        # The decode stage is d's chain entry and holds each request until it answers: it is
        # picked and scaled by requests in flight (its queue says little), as a decode stage
        # behind a prefill stage is on one node. Six at once grow it to 2-3 instances, never
        # a fourth; each completion is exact; an added instance goes back after 1 s idle.
        prompts = [[i + 1] * (i + 2) for i in range(6)]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda p: post(self.url("d"), {
                "prompt": p, "max_tokens": 60, "temperature": 0}, timeout=60), prompts))
        for p, (status, _, data) in zip(prompts, results):
            self.assertEqual(status, 200, data)
            self.assertEqual(json.loads(data)["choices"][0]["token_ids"],
                             model_run(self.model, p, 60)[0], p)
        log = self.cluster.agents["d"].log_tail(400)
        self.assertIn("llm.decode scaled up to 2 instances", log)
        self.assertNotIn("scaled up to 4", log)
        time.sleep(1.5)
        status, _, _ = post(self.url("d"), {"prompt": [1, 2, 3], "max_tokens": 1})
        self.assertEqual(status, 200)
        self.assertIn("llm.decode scaled down", self.cluster.agents["d"].log_tail(400))

    def test_bad_requests_get_the_json_error_of_the_node_that_finds_them(self):
        cases = [
            # Found by the prefill stage on p, passed back by d as it came.
            ("d", {"prompt": [1, 320]}, 400, "not below the vocabulary size"),
            ("d", {"prompt": [1], "max_tokens": 0}, 400, "max_tokens"),
            ("d", {"prompt": [1], "temperature": -1}, 400, "temperature"),
            # Found by d's gateway itself.
            ("d", "not json", 400, "not a JSON object"),
            # At p: relayed to d, which asks p.
            ("p", {"prompt": []}, 400, "prompt is empty"),
        ]
        for node, body, status, detail in cases:
            got, ctype, data = post(self.url(node), body)
            self.assertEqual((got, ctype), (status, "application/json"), (node, body, data))
            self.assertIn(detail, json.loads(data)["detail"], (node, body))
        # The prefill endpoint is the cluster's: a decode node has none.
        request = urllib.request.Request(self.url("d") + "/v1/cluster/llm/prefill",
                                         data=b'{"prompt": [1]}', method="POST")
        with self.assertRaises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        self.assertEqual(refused.exception.code, 404)
        self.assertEqual(json.loads(refused.exception.read())["error"], "no_model")
        # Nothing was disturbed.
        status, _, data = post(self.url("d"), {"prompt": [4, 5], "max_tokens": 5, "temperature": 0})
        self.assertEqual(status, 200, data)
        self.assertEqual(json.loads(data)["choices"][0]["token_ids"],
                         model_run(self.model, [4, 5], 5)[0])

    def test_z_a_killed_prefill_node_is_passed_over_and_none_left_is_503(self):
        # Last (by name). With p killed, q prefills every request at once (p refuses the
        # connection before the controller notices).
        self.cluster.agents["p"].kill()
        for i in range(4):
            for node in "dc":
                status, _, data = post(self.url(node), {"prompt": [i, 6], "max_tokens": 4,
                                                        "temperature": 0})
                self.assertEqual(status, 200, (node, data))
                self.assertEqual(json.loads(data)["choices"][0]["token_ids"],
                                 model_run(self.model, [i, 6], 4)[0], node)
        # With q killed too, before and after the controller notices, d has no prefill node to
        # ask, and says so; c relays to d, which answers the same.
        self.cluster.agents["q"].kill()
        deadline = time.monotonic() + 10
        while True:
            for node in "dc":
                status, ctype, data = post(self.url(node), {"prompt": [1, 2], "max_tokens": 3,
                                                            "temperature": 0}, timeout=30)
                self.assertEqual((status, ctype), (503, "application/json"), (node, data))
                self.assertEqual(json.loads(data)["error"], "model_unavailable", data)
            listed = http_json(self.cluster.controller.url + "/v1/models")
            if [n["node"] for m in listed["data"] for n in m["nodes"]] == ["d"]:
                break
            self.assertLess(time.monotonic(), deadline, listed)
            time.sleep(0.2)


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("ip"), "needs root and iproute2 (netns)")
class DecodeNodeKeepsBusyInstances(unittest.TestCase):
    def test_an_added_decode_instance_is_kept_while_it_serves(self):
        # A decode node's decode stage is its chain's entry and holds each request until it
        # answers: picked and scaled by requests in flight, and never given back while it
        # serves one (its queue, empty, would say it is idle). Two long completions at once
        # grow it to 2 instances; a short one after idle_seconds (1 s), while both still run,
        # must not take the second instance away: both long ones finish, exact. Once they
        # are done and 1 s has passed, the next completion gives it back. The model is
        # slower than the other tests' (8 layers), so that the long ones last seconds.
        with tempfile.TemporaryDirectory() as tmp:
            model = os.path.join(tmp, "slow")
            lifl_cli("model", "generate", "--dir", model, "--layers", "8", "--hidden", "512",
                     "--intermediate", "1536", "--heads", "8", "--kv-heads", "2", "--head-dim",
                     "64", "--vocab", "320", "--max-positions", "512", "--seed", "9")
            cluster = Cluster(
                nodes=("p", "d"), warm_pool=3,
                agent_args={"p": ["--model", model, "--model-role", "prefill"],
                            "d": ["--model", model, "--model-role", "decode",
                                  "--model-decode-instances", "2"]},
                # The long ones are not streamed: no progress until they end, which under the
                # sanitizers takes longer than the default 30 s.
                agent_functions={"d": {"scale_up_queue_depth": 1, "idle_seconds": 1,
                                       "chain_timeout_seconds": 300}})
            try:
                d = cluster.agents["d"]
                wait_roles(cluster, {"p": "prefill", "d": "decode"})
                long = {"prompt": [3, 1, 4], "max_tokens": 300, "temperature": 0}
                with concurrent.futures.ThreadPoolExecutor(2) as pool:
                    running = [pool.submit(post, d.url, long, 600) for _ in range(2)]
                    deadline = time.monotonic() + 60
                    while "llm.decode scaled up to 2 instances" not in d.log_tail(400):
                        self.assertLess(time.monotonic(), deadline, d.log_tail(40))
                        time.sleep(0.05)
                    time.sleep(1.2)  # past idle_seconds since the second instance was picked
                    self.assertFalse(any(f.done() for f in running), "the long ones still run")
                    status, _, data = post(d.url, {"prompt": [2, 7], "max_tokens": 1})
                    self.assertEqual(status, 200, data)
                    self.assertNotIn("scaled down", d.log_tail(400))
                    answers = [f.result() for f in running]
                expected = model_run(model, [3, 1, 4], 300)[0]
                for status, _, data in answers:
                    self.assertEqual(status, 200, data)
                    self.assertEqual(json.loads(data)["choices"][0]["token_ids"], expected)
                time.sleep(1.2)
                status, _, _ = post(d.url, {"prompt": [2, 7], "max_tokens": 1})
                self.assertEqual(status, 200)
                self.assertIn("llm.decode scaled down to 1 instances", d.log_tail(400))
            except BaseException:
                print("\n" + cluster.logs())
                raise
            finally:
                cluster.close()


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("ip"), "needs root and iproute2 (netns)")
class ClusterDisaggregatedAuth(unittest.TestCase):
    def test_the_prefill_call_carries_the_cluster_credential(self):
        # With security.auth, a completion at d needs the admin credential there; d asks p
        # with the cluster's credential, which p's /v1/cluster routes require.
        with tempfile.TemporaryDirectory() as tmp:
            model = write_model(tmp)
            cluster = Cluster(nodes=("p", "d"), auth=True, agent_admin=True, warm_pool=3,
                              agent_args={"p": ["--model", model, "--model-role", "prefill"],
                                          "d": ["--model", model, "--model-role", "decode"]})
            try:
                wait_roles(cluster, {"p": "prefill", "d": "decode"}, token=cluster.admin_token)
                body = {"prompt": [4, 4, 2], "max_tokens": 5, "temperature": 0}
                status, _, data = post(cluster.agents["d"].url, body, token=cluster.admin_token)
                self.assertEqual(status, 200, data)
                self.assertEqual(json.loads(data)["choices"][0]["token_ids"],
                                 model_run(model, [4, 4, 2], 5)[0])
                status, _, data = post(cluster.agents["d"].url, body)
                self.assertEqual((status, json.loads(data)["error"]), (401, "unauthorized"), data)
                # The prefill call itself, without the cluster's credential and with the admin's.
                for token in (None, cluster.admin_token):
                    request = urllib.request.Request(
                        cluster.agents["p"].url + "/v1/cluster/llm/prefill", method="POST",
                        data=json.dumps(body).encode(),
                        headers={"Authorization": f"Bearer {token}"} if token else {})
                    with self.assertRaises(urllib.error.HTTPError) as refused:
                        urllib.request.urlopen(request, timeout=10)
                    self.assertIn(refused.exception.code, (401, 403), token)
            except BaseException:
                print("\n" + cluster.logs())
                raise
            finally:
                cluster.close()


if __name__ == "__main__":
    unittest.main()
