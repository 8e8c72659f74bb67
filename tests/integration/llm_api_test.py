"""The LLM stages served by `lifl up --model DIR` (docs/llm.md): POST /v1/completions through
the chain llm.prefill -> llm.decode, real processes on loopback, a random model written by
`lifl model generate`. Checked against the CPU engine run directly (`lifl model run`): greedy
completions give the same tokens whether served alone, streamed, or batched with other
requests in the decode stage; the stream's events follow API.md; bad requests get API.md's
JSON errors and disturb nothing; Prometheus has the latency metrics."""
import concurrent.futures
import http.client
import json
import os
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

from lifl_harness import Platform, failed_so_far, lifl_cli, model_run, picking_args


def post(url, body, timeout=60, context=None, token=None):
    """POST /v1/completions of `body` (a dict, or a string sent as it is): status, content
    type and body. https:// URLs use the SSLContext `context`; `token` goes as a Bearer."""
    u = urllib.parse.urlparse(url)
    conn = (http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout, context=context)
            if u.scheme == "https" else http.client.HTTPConnection(u.hostname, u.port, timeout=timeout))
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request("POST", "/v1/completions", body if isinstance(body, str) else json.dumps(body), headers)
    r = conn.getresponse()
    data = r.read().decode()
    conn.close()
    return r.status, r.getheader("Content-Type"), data


def greedy_all(test, url, prompts, max_tokens):
    """Greedy completions of `prompts`, posted at once; each must answer 200. Their token ids."""
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(lambda pr: post(url, {"prompt": pr, "max_tokens": max_tokens,
                                                      "temperature": 0}, timeout=120), prompts))
    for status, _, data in results:
        test.assertEqual(status, 200, data)
    return [json.loads(data)["choices"][0]["token_ids"] for _, _, data in results]


class LlmApi(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = os.path.join(cls.tmp.name, "tiny")
        lifl_cli("model", "generate", "--dir", cls.model, "--layers", "2", "--vocab", "320",
                 "--seed", "4", "--max-positions", "256")
        cls.platform = Platform(router="userspace", extra_args=["--model", cls.model])

    @classmethod
    def tearDownClass(cls):
        cls.platform.stop()
        cls.tmp.cleanup()

    def tearDown(self):
        if failed_so_far(self):
            print(f"\n---- lifl log ({self.id()}) ----\n{self.platform.log_tail()}")

    def complete(self, **body):
        status, ctype, data = post(self.platform.url, body)
        self.assertEqual(status, 200, data)
        self.assertEqual(ctype, "application/json")
        return json.loads(data)

    def test_greedy_completion_matches_the_engine(self):
        prompt = [5, 17, 200, 3, 99, 42]
        got = self.complete(prompt=prompt, max_tokens=12, temperature=0)
        self.assertEqual(got["object"], "text_completion")
        self.assertEqual(got["model"], "tiny")
        choice = got["choices"][0]
        self.assertEqual(choice["token_ids"], model_run(self.model, prompt, 12)[0])
        self.assertEqual(choice["finish_reason"], "length")
        self.assertEqual(got["usage"], {"prompt_tokens": 6, "completion_tokens": 12,
                                        "total_tokens": 18})
        expected_text = bytes(t for t in choice["token_ids"] if t < 256).decode("utf-8", "replace")
        self.assertEqual(choice["text"], expected_text)

    def test_the_model_is_listed(self):
        with urllib.request.urlopen(self.platform.url + "/v1/models", timeout=10) as r:
            listed = json.loads(r.read())
        self.assertEqual(listed, {"object": "list",
                                  "data": [{"id": "tiny", "object": "model", "owned_by": "lifl"}]})

    def test_text_prompts_are_byte_tokens(self):
        got = self.complete(prompt="Hi!", max_tokens=4, temperature=0)
        self.assertEqual(got["usage"]["prompt_tokens"], 3)
        self.assertEqual(got["choices"][0]["token_ids"], model_run(self.model, list(b"Hi!"), 4)[0])

    def test_streaming_sends_one_event_per_token(self):
        prompt = [1, 2, 3, 4]
        status, ctype, data = post(self.platform.url, {"prompt": prompt, "max_tokens": 6,
                                                       "temperature": 0, "stream": True})
        self.assertEqual(status, 200, data)
        self.assertEqual(ctype, "text/event-stream")
        events = [line[len("data: "):] for line in data.split("\n\n") if line.startswith("data: ")]
        self.assertEqual(events[-1], "[DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        tokens = [t for c in chunks for t in c["choices"][0]["token_ids"]]
        self.assertEqual(tokens, model_run(self.model, prompt, 6)[0])
        self.assertEqual(len(chunks), 7, "6 tokens, then the finish event")
        self.assertTrue(all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1]))
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 6)

    def test_concurrent_requests_are_batched_and_exact(self):
        # 8 requests of different lengths at once: the decode stage runs them together
        # (continuous batching); each must still be its greedy completion alone.
        prompts = [[i + 1] * (i + 2) for i in range(8)]
        lengths = [3 + 2 * i for i in range(8)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda pl: post(self.platform.url, {
                "prompt": pl[0], "max_tokens": pl[1], "temperature": 0}), zip(prompts, lengths)))
        for (status, _, data), prompt, n in zip(results, prompts, lengths):
            self.assertEqual(status, 200, data)
            self.assertEqual(json.loads(data)["choices"][0]["token_ids"],
                             model_run(self.model, prompt, n)[0])

    def test_stop_strings_end_the_text(self):
        prompt = [9, 8, 7, 6]
        free = model_run(self.model, prompt, 20)[0]
        text = bytes(t for t in free if t < 256)
        # The first ASCII letter or digit the model writes, as a stop string.
        at = next((i for i, b in enumerate(text) if b < 128 and chr(b).isalnum()), None)
        if at is None:
            self.skipTest("the model wrote no ASCII letter or digit")
        stop = chr(text[at])
        got = self.complete(prompt=prompt, max_tokens=20, temperature=0, stop=[stop, "zzzz"])
        choice = got["choices"][0]
        self.assertEqual(choice["finish_reason"], "stop")
        self.assertEqual(choice["text"], text[:at].decode("utf-8", "replace"))
        self.assertNotIn(stop, choice["text"])
        self.assertLess(len(choice["token_ids"]), 20)
        self.assertEqual(choice["token_ids"], free[:len(choice["token_ids"])])
        status, _, data = post(self.platform.url, {"prompt": prompt, "stop": [1]})
        self.assertEqual(status, 400, data)

    def test_sampling_with_a_seed_is_repeatable(self):
        body = dict(prompt=[7, 8, 9], max_tokens=10, temperature=0.9, top_p=0.9, top_k=50, seed=3)
        a, b = self.complete(**body), self.complete(**body)
        self.assertEqual(a["choices"][0]["token_ids"], b["choices"][0]["token_ids"])
        c = self.complete(**dict(body, seed=4))
        self.assertNotEqual(a["choices"][0]["token_ids"], c["choices"][0]["token_ids"])

    def test_sampled_completions_equal_lifl_model_run(self):
        # A sampled decode step picks its tokens in the engine (Engine::decodeTokens; on the
        # GPU, on the device), top_k and top_p included; `lifl model run --logits FILE` picks
        # from each step's logits on the host (kernels::llm::sample). Both draw the same
        # generator alike, so a seed gives the same tokens either way, served (3 at once,
        # batched, each with its own settings) or run by `lifl model run`; and another seed
        # gives others.
        prompts = [[7, 8, 9], [4, 4], [11, 12, 13, 14]]
        settings = [{"temperature": 1.0}, {"temperature": 0.9, "top_k": 20},
                    {"temperature": 1.3, "top_k": 100, "top_p": 0.7}]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda i: post(self.platform.url, {
                "prompt": prompts[i], "max_tokens": 12, "seed": 20 + i, **settings[i]}),
                range(3)))
        for i, (status, _, data) in enumerate(results):
            self.assertEqual(status, 200, data)
            run = picking_args(settings[i], 20 + i)
            expected = model_run(self.model, prompts[i], 12, *run)[0]
            self.assertEqual(json.loads(data)["choices"][0]["token_ids"], expected, settings[i])
            with tempfile.NamedTemporaryFile() as logits:
                self.assertEqual(model_run(self.model, prompts[i], 12, *run,
                                           logits=logits.name)[0], expected, settings[i])
        self.assertNotEqual(model_run(self.model, prompts[0], 12, "--temperature", "1",
                                      "--seed", "19")[0],
                            model_run(self.model, prompts[0], 12, "--temperature", "1",
                                      "--seed", "20")[0])

    def test_bad_requests_get_json_errors(self):
        cases = [
            ({"max_tokens": 3}, 400, "prompt is required"),
            ({"prompt": [1, 320]}, 400, "not below the vocabulary size"),
            ({"prompt": []}, 400, "prompt is empty"),
            ({"prompt": [1], "max_tokens": 0}, 400, "max_tokens"),
            ({"prompt": [1], "temperature": -1}, 400, "temperature"),
            ({"prompt": [1], "stream": "yes"}, 400, "stream must be"),
            ({"prompt": [1], "max_tokens": 300}, 400, "positions"),
            ({"prompt": [1], "model": "other"}, 404, "serves tiny"),
        ]
        for body, status, why in cases:
            with self.subTest(body=body):
                got_status, ctype, data = post(self.platform.url, body)
                self.assertEqual(got_status, status, data)
                self.assertEqual(ctype, "application/json")
                self.assertIn(why, json.loads(data)["detail"])
        status, _, data = post(self.platform.url, "not json")
        self.assertEqual(status, 400)
        # Nothing was disturbed: a good request still completes.
        self.complete(prompt=[1, 2], max_tokens=2, temperature=0)

    def test_metrics_report_latency_and_tokens(self):
        self.complete(prompt=[3, 3, 3], max_tokens=5, temperature=0)
        metrics = self.platform.metrics()
        for name in ("lifl_llm_time_to_first_token_seconds_count",
                     "lifl_llm_inter_token_latency_seconds_count",
                     "lifl_llm_generated_tokens_total"):
            self.assertIn(name, metrics)
        generated = [float(l.split()[-1]) for l in metrics.splitlines()
                     if l.startswith("lifl_llm_generated_tokens_total")]
        self.assertGreaterEqual(generated[0], 5)


class KvCacheAdmission(unittest.TestCase):
    def test_requests_wait_for_pages_instead_of_failing(self):
        # The decode stage holds KV pages for 2 full-length sequences; 6 requests of 200
        # tokens each need 13 pages apiece, so at most 2 run at once and the others wait to
        # be admitted. Each still gets its own greedy completion.
        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, "small-pool")
            lifl_cli("model", "generate", "--dir", d, "--layers", "1", "--vocab", "320",
                     "--max-positions", "256", "--seed", "6")
            p = Platform(router="userspace",
                         extra_args=["--model", d, "--model-max-sequences", "2"])
            try:
                prompts = [[i + 1, i + 2, i + 3] for i in range(6)]
                served = greedy_all(self, p.url, prompts, 200)
                for ids, pr in zip(served, prompts):
                    self.assertEqual(ids, model_run(d, pr, 200)[0])
            finally:
                p.stop()


class PrefillScaling(unittest.TestCase):
    def test_prefill_scales_with_its_queue_and_back(self):
        # Prompts of 300 tokens keep a CPU prefill busy for a while, so 8 concurrent requests
        # queue at the first instance: with scale_up_queue_depth 1 the chain's first hop grows
        # (up to --model-prefill-instances 3, never beyond), each completion still equals its
        # own `lifl model run`, and after idle_seconds (1) an added instance goes back.
        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, "scaling")
            lifl_cli("model", "generate", "--dir", d, "--layers", "4", "--hidden", "256",
                     "--intermediate", "512", "--heads", "4", "--kv-heads", "2", "--vocab", "512",
                     "--max-positions", "512", "--seed", "12")
            config = "functions:\n  scale_up_queue_depth: 1\n  idle_seconds: 1\n"
            p = Platform(router="userspace", config=config, warm_pool=4,
                         extra_args=["--model", d, "--model-prefill-instances", "3"])
            try:
                prompts = [[(7 * i + j) % 500 + 1 for j in range(300)] for i in range(8)]
                served = greedy_all(self, p.url, prompts, 3)
                prefills = [i for i in p.instances() if i["function"] == "llm.prefill"]
                for ids, pr in zip(served, prompts):
                    self.assertEqual(ids, model_run(d, pr, 3)[0])
                log = p.log_tail(400)
                self.assertIn("llm.prefill scaled up to 2 instances", log)
                self.assertNotIn("scaled up to 4", log)
                self.assertTrue(2 <= len(prefills) <= 3, prefills)
                print(f"prefill instances after the burst: {len(prefills)}", flush=True)
                time.sleep(1.5)  # past idle_seconds: the next request lets an idle one go
                status, _, _ = post(p.url, {"prompt": [1, 2, 3], "max_tokens": 1})
                self.assertEqual(status, 200)
                self.assertIn("llm.prefill scaled down", p.log_tail(400))
            finally:
                p.stop()


class DecodeScaling(unittest.TestCase):
    def test_decode_scales_with_requests_in_flight(self):
        # --model-decode-instances 3: prefill hands its events to the agent, which gives each
        # to the decode instance with the fewest requests in flight; with
        # scale_up_queue_depth 1 a second (and third) instance joins while requests run, never
        # a fourth. Each completion equals its own `lifl model run`; after idle_seconds (1)
        # an added decode instance goes back.
        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, "decode-scaling")
            lifl_cli("model", "generate", "--dir", d, "--layers", "2", "--vocab", "320",
                     "--max-positions", "512", "--seed", "15")
            config = "functions:\n  scale_up_queue_depth: 1\n  idle_seconds: 1\n"
            p = Platform(router="userspace", config=config, warm_pool=6,
                         extra_args=["--model", d, "--model-decode-instances", "3",
                                     "--model-prefill-instances", "1"])
            try:
                prompts = [[i + 1, i + 2, i + 3, i + 4] for i in range(6)]
                served = greedy_all(self, p.url, prompts, 60)
                decodes = [i for i in p.instances() if i["function"] == "llm.decode"]
                for ids, pr in zip(served, prompts):
                    self.assertEqual(ids, model_run(d, pr, 60)[0])
                log = p.log_tail(400)
                self.assertIn("llm.decode scaled up to 2 instances", log)
                self.assertNotIn("scaled up to 4", log)
                self.assertTrue(2 <= len(decodes) <= 3, decodes)
                time.sleep(1.5)
                status, _, _ = post(p.url, {"prompt": [1, 2, 3], "max_tokens": 1})
                self.assertEqual(status, 200)
                self.assertIn("llm.decode scaled down", p.log_tail(400))
            finally:
                p.stop()
            r = lifl_cli("up", "--port", 0, "--model", d, "--model-decode-instances", 0,
                         check=False)
            self.assertIn("--model-decode-instances >= 1", r.stderr)


class ServedContext(unittest.TestCase):
    def test_max_context_caps_requests(self):
        # --model-max-context 64 on a model of 1024 positions: a request of 50 + 20 tokens is
        # refused with the cap in its error, one of 50 + 14 is served as `lifl model run`.
        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, "context")
            lifl_cli("model", "generate", "--dir", d, "--layers", "1", "--vocab", "320",
                     "--max-positions", "1024", "--seed", "16")
            p = Platform(router="userspace", extra_args=["--model", d, "--model-max-context", 64])
            try:
                prompt = list(range(1, 51))
                status, _, data = post(p.url, {"prompt": prompt, "max_tokens": 20})
                self.assertEqual(status, 400, data)
                self.assertIn("64 positions", json.loads(data)["detail"])
                status, _, data = post(p.url, {"prompt": prompt, "max_tokens": 14,
                                               "temperature": 0})
                self.assertEqual(status, 200, data)
                self.assertEqual(json.loads(data)["choices"][0]["token_ids"],
                                 model_run(d, prompt, 14)[0])
            finally:
                p.stop()


class ServedRetrieval(unittest.TestCase):
    def test_kv_retrieval_served_as_run(self):
        # lifl up --kv-retrieval: the decode stage clusters the handed-over prompt and attends
        # to sinks, selected units and the window; each completion equals `lifl model run`
        # with the same setting (and, with a 64-token budget, differs from full attention's
        # at least once among the requests: the setting reaches the stages).
        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, "retrieval")
            lifl_cli("model", "generate", "--dir", d, "--layers", "2", "--vocab", "320",
                     "--max-positions", "1024", "--seed", "14")
            spec = "budget=64,tau=0.5"
            p = Platform(router="userspace", extra_args=["--model", d, "--kv-retrieval", spec])
            try:
                prompts = [[(i * 37 + s) % 300 for i in range(300)] for s in range(3)]
                served = greedy_all(self, p.url, prompts, 12)
                for ids, pr in zip(served, prompts):
                    self.assertEqual(ids, model_run(d, pr, 12, "--kv-retrieval", spec)[0])
                self.assertNotEqual(served, [model_run(d, pr, 12)[0] for pr in prompts])
            finally:
                p.stop()


class EndOfSequence(unittest.TestCase):
    def test_eos_stops_with_finish_reason_stop(self):
        with tempfile.TemporaryDirectory() as tmp:
            plain, with_eos = os.path.join(tmp, "plain"), os.path.join(tmp, "eos")
            args = ["model", "generate", "--layers", "2", "--vocab", "320", "--seed", "9"]
            lifl_cli(*args, "--dir", plain)
            prompt = [10, 20, 30]
            free = model_run(plain, prompt, 8)[0]
            eos = free[3]
            stop_at = free.index(eos) + 1  # the first time the model emits it
            lifl_cli(*args, "--dir", with_eos, "--eos", str(eos))
            self.assertEqual(model_run(with_eos, prompt, 8)[0], free[:stop_at])
            p = Platform(router="userspace", extra_args=["--model", with_eos])
            try:
                status, _, data = post(p.url, {"prompt": prompt, "max_tokens": 8, "temperature": 0})
                self.assertEqual(status, 200, data)
                choice = json.loads(data)["choices"][0]
                self.assertEqual(choice["finish_reason"], "stop")
                self.assertEqual(choice["token_ids"], free[:stop_at])
                text = bytes(t for t in free[:stop_at - 1] if t < 256).decode("utf-8", "replace")
                self.assertEqual(choice["text"], text, "the end-of-sequence token has no text")
            finally:
                p.stop()


class Quantised(unittest.TestCase):
    def test_int4_served_as_run(self):
        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, "q")
            lifl_cli("model", "generate", "--dir", d, "--hidden", "128", "--intermediate", "256",
                     "--vocab", "320")
            p = Platform(router="userspace", extra_args=["--model", d, "--quantize", "int4"])
            try:
                prompt = [4, 5, 6, 7]
                status, _, data = post(p.url, {"prompt": prompt, "max_tokens": 6, "temperature": 0})
                self.assertEqual(status, 200, data)
                self.assertEqual(json.loads(data)["choices"][0]["token_ids"],
                                 model_run(d, prompt, 6, "--quantize", "int4")[0])
            finally:
                p.stop()


class ServedFp32Cache(unittest.TestCase):
    def test_fp32_kv_cache_served_as_run(self):
        # --model-kv-cache f32: the pages keep fp32, and the hand-off from prefill to decode
        # moves 4 bytes a value instead of BF16's 2; concurrent requests equal the engine's.
        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, "m")
            lifl_cli("model", "generate", "--dir", d, "--seed", "12")
            p = Platform(router="userspace", extra_args=["--model", d, "--model-kv-cache", "f32"])
            try:
                prompts = [[3 + i, 9, 27 + i, 81] for i in range(3)]
                expected = [model_run(d, pr, 8, "--kv-cache", "f32")[0] for pr in prompts]
                self.assertEqual(greedy_all(self, p.url, prompts, 8), expected)
            finally:
                p.stop()


class NoModel(unittest.TestCase):
    def test_completions_without_a_model_is_404(self):
        p = Platform(router="userspace")
        try:
            status, _, data = post(p.url, {"prompt": [1]})
            self.assertEqual(status, 404)
            self.assertEqual(json.loads(data)["error"], "no_model")
            with urllib.request.urlopen(p.url + "/v1/models", timeout=10) as r:
                self.assertEqual(json.loads(r.read()), {"object": "list", "data": []})
        finally:
            p.stop()


class ModelRole(unittest.TestCase):
    def test_one_stage_needs_a_cluster_and_a_known_role(self):
        # --model-role prefill|decode runs one stage of a cluster's model (cluster_disaggregated
        # _test); on one machine, or with a role that does not exist, `lifl up` refuses to start.
        with tempfile.TemporaryDirectory() as tmp:
            model = os.path.join(tmp, "tiny")
            lifl_cli("model", "generate", "--dir", model, "--layers", "1", "--vocab", "300")
            for role, why in (("prefill", "--model-role prefill needs a cluster"),
                              ("decode", "--model-role decode needs a cluster"),
                              ("sideways", "--model-role is both, prefill or decode")):
                r = lifl_cli("up", "--port", "0", "--model", model, "--model-role", role,
                             "--data-dir", os.path.join(tmp, "data"), check=False, timeout=60)
                self.assertNotEqual(r.returncode, 0, role)
                self.assertIn("bad_arguments", r.stderr, role)
                self.assertIn(why, r.stderr, role)


if __name__ == "__main__":
    unittest.main()
