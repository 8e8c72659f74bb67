"""Function chains declared in the YAML config, invoked over HTTP with CloudEvents (binary and
structured mode): the event is written into the store once, its descriptor goes through three
function instances over the router, and the last one's output is the HTTP reply."""
import base64
import codecs
import http.client
import json
import os
import signal
import threading
import time
import unittest

from lifl_harness import PlatformTestCase

CONFIG = """
functions:
  warm_pool: 2
  chains:
    - name: shout
      functions: [example.upper, example.reverse, example.rot13]
    - name: echo-upper
      functions: [example.upper]
    - name: routed
      functions: [example.rot13, example.upper]
      max_instances: [1, 3]
"""


def expected(text: str) -> str:  # independent reference of the three steps
    return codecs.encode(text.upper()[::-1], "rot13")


class Chains(PlatformTestCase):
    config = CONFIG

    def post(self, path, body, headers):
        host, port = self.platform.url.replace("http://", "").split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=30)
        c.request("POST", path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        out = (r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        c.close()
        return out

    def binary(self, text, chain="shout", **extra):
        headers = {"ce-specversion": "1.0", "ce-id": "evt-1", "ce-source": "/tests", "ce-type": "dev.test.text",
                   "ce-traceparent": "abc", "Content-Type": "text/plain"}
        headers.update(extra)
        return self.post(f"/v1/functions/{chain}", text.encode(), headers)

    def test_binary_mode_three_hops(self):
        text = "Hello, LIFL! Serverless aggregation 123"
        status, headers, body = self.binary(text)
        self.assertEqual(status, 200, body)
        self.assertEqual(body.decode(), expected(text))
        self.assertEqual(headers["ce-type"], "dev.lifl.example.rot13")
        self.assertEqual(headers["ce-id"], "evt-1")
        self.assertEqual(headers["ce-source"], "/tests")
        self.assertEqual(headers["ce-traceparent"], "abc", "extension attributes travel the chain")
        self.assertEqual(headers["content-type"], "text/plain")

    def test_structured_mode(self):
        event = {"specversion": "1.0", "id": "s1", "source": "/tests", "type": "dev.test", "data": "abc xyz"}
        status, headers, body = self.post("/v1/functions/shout", json.dumps(event),
                                          {"Content-Type": "application/cloudevents+json"})
        self.assertEqual(status, 200, body)
        self.assertTrue(headers["content-type"].startswith("application/cloudevents+json"))
        reply = json.loads(body)
        self.assertEqual(reply["data"], expected("abc xyz"))
        self.assertEqual(reply["id"], "s1")
        self.assertEqual(reply["type"], "dev.lifl.example.rot13")
        event = {"specversion": "1.0", "id": "s2", "source": "/t", "type": "t",
                 "data_base64": base64.b64encode(b"bytes!").decode()}
        status, _, body = self.post("/v1/functions/echo-upper", json.dumps(event),
                                    {"Content-Type": "application/cloudevents+json"})
        self.assertEqual((status, json.loads(body)["data"]), (200, "BYTES!"))

    def test_large_event(self):
        text = "ab" * 500_000  # 1 MB straight into the store
        status, _, body = self.binary(text)
        self.assertEqual(status, 200)
        self.assertEqual(body.decode(), expected(text))

    def test_errors(self):
        status, _, body = self.binary("")  # example.rot13 rejects empty data
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body), {"error": "empty_event", "detail": "example.rot13 needs non-empty data"})
        status, _, body = self.binary("x", chain="nope")
        self.assertEqual((status, json.loads(body)["error"]), (404, "unknown_function"))
        status, _, body = self.post("/v1/functions/shout", b"x", {"ce-specversion": "1.0", "ce-source": "s", "ce-type": "t"})
        self.assertEqual((status, json.loads(body)["error"]), (400, "bad_header"))
        status, _, body = self.post("/v1/functions/shout", b"{", {"Content-Type": "application/cloudevents+json"})
        self.assertEqual((status, json.loads(body)["error"]), (400, "malformed_event"))
        status, _, body = self.binary("still works after errors")
        self.assertEqual((status, body.decode()), (200, expected("still works after errors")))

    def invoke_all(self, texts, chain):
        """Each text sent to the chain from a thread of its own, all at once; the replies."""
        results, errors = {}, []

        def call(i):
            try:
                results[i] = self.binary(texts[i], chain=chain)
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [])
        return [results[i] for i in range(len(texts))]

    def test_concurrent_invocations(self):
        texts = [f"request number {i}" for i in range(24)]
        for text, (status, _, body) in zip(texts, self.invoke_all(texts, "shout")):
            self.assertEqual(status, 200)
            self.assertEqual(body.decode(), expected(text))

    def test_routed_hop_under_load(self):
        # max_instances [1, 3]: rot13 sends its events to the agent, which gives each to the
        # upper instance with the fewest requests in flight (adding up to 3). 48 concurrent
        # invocations each get their own answer.
        texts = [f"routed request {i}" for i in range(48)]
        for text, (status, _, body) in zip(texts, self.invoke_all(texts, "routed")):
            self.assertEqual(status, 200, body)
            self.assertEqual(body.decode(), codecs.encode(text, "rot13").upper())
        self.assertNotIn("example.upper scaled up to 4", self.platform.log_tail(400))

    def test_chain_survives_instance_kill(self):
        busy = [i for i in self.platform.instances() if i["function"] == "example.reverse"]
        self.assertEqual(len(busy), 1)
        os.kill(busy[0]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            now = [i for i in self.platform.instances() if i["function"] == "example.reverse"]
            if now and now[0]["id"] != busy[0]["id"]:
                break
            self.assertLess(time.monotonic(), deadline, "chain was not re-deployed")
            time.sleep(0.02)
        status, _, body = self.binary("after the kill")
        self.assertEqual((status, body.decode()), (200, expected("after the kill")))

    def test_a_redeployed_chain_keeps_what_is_queued_behind_a_release(self):
        # The instances of a chain re-deployed after a death get Release and a new Assign,
        # and their new peers send them events at once. An instance that is slow to read its
        # queue (stopped here) used to free, at the Release, every object it owned: the
        # events queued behind it too, so the next request was lost (504 after the chain's
        # timeout). It must be answered once the instances read their queues.
        chained = [i for i in self.platform.instances() if i["function"].startswith("example.")]
        victim = next(i for i in chained if i["function"] == "example.reverse")  # shout's only
        stopped = [i["pid"] for i in chained if i["id"] != victim["id"]]
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            os.kill(victim["pid"], signal.SIGKILL)
            deadline = time.monotonic() + 10
            while not any(i["function"] == "example.reverse" and i["id"] != victim["id"]
                          for i in self.platform.instances()):
                self.assertLess(time.monotonic(), deadline, "chain was not re-deployed")
                time.sleep(0.02)
            reused = [i for i in self.platform.instances() if i["pid"] in stopped and i["function"]]
            result = {}
            request = threading.Thread(target=lambda: result.update(r=self.binary("queued behind")))
            request.start()
            time.sleep(0.5)  # the request reaches the (stopped) new chain's queues
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        request.join(40)
        self.assertTrue(reused, "the re-deployed chain should reuse a stopped instance")
        status, _, body = result["r"]
        self.assertEqual((status, body.decode()), (200, expected("queued behind")))


class ChainsUserspace(Chains):
    router = "userspace"


if __name__ == "__main__":
    unittest.main()
