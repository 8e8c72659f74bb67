"""What prefill on another node costs (docs/benchmarks.md "LLM: prefill and decode on
different nodes"): the same completions served by one node that runs both stages (the
baseline) and by a decode node whose prompts a prefill node prefills, its KV cache coming
back over HTTP. Real `lifl controller` and `lifl agent` processes, each agent in its own
network namespace (tests/support/lifl_cluster.py), a random CPU model written by
`lifl model generate`. Each request is streamed; time to first token is when its first event
arrives. Needs root (network namespaces).

    sudo /usr/bin/python3 bench/llm/bench_disaggregated.py [--lifl build/bin/lifl] [--prompt 1024]
        [--requests 6] [--max-tokens 16]

The nodes share this machine's cores, so the figure is the hand-off's cost, not what
separate prefill machines would give back to decode.
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../tests/support"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../clients/python"))


def streamed(url, body):
    """POSTs a streamed completion: seconds to the first event, seconds to the end, tokens."""
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"{r.status}: {r.read().decode()}")
    first, tokens = None, []
    buffer = b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        if first is None:
            first = time.perf_counter() - t0
        buffer += chunk
    total = time.perf_counter() - t0
    conn.close()
    for event in buffer.decode().split("\n\n"):
        if event.startswith("data: {"):
            tokens += json.loads(event[len("data: "):])["choices"][0]["token_ids"]
    return first, total, tokens


def serve(cluster, node, prompt_of, requests, max_tokens):
    """Sequential streamed greedy completions at `node`: time to first token, decode rate."""
    url = cluster.agents[node].url
    streamed(url, {"prompt": prompt_of(999), "max_tokens": 2, "temperature": 0})  # warm-up
    ttft, rates, answers = [], [], []
    for i in range(requests):
        first, total, tokens = streamed(url, {"prompt": prompt_of(i), "max_tokens": max_tokens,
                                              "temperature": 0})
        ttft.append(first)
        rates.append((len(tokens) - 1) / (total - first))
        answers.append(tokens)
    return statistics.median(ttft), statistics.median(rates), answers


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lifl", default="build/bin/lifl")
    p.add_argument("--prompt", type=int, default=1024, help="prompt tokens")
    p.add_argument("--requests", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=16)
    a = p.parse_args()
    os.environ["LIFL_BIN"] = os.path.abspath(a.lifl)
    from lifl_cluster import Cluster, http_json  # reads LIFL_BIN

    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "m")
        shape = ["--hidden", "512", "--intermediate", "1536", "--layers", "8", "--heads", "8",
                 "--kv-heads", "8", "--head-dim", "64", "--vocab", "32000", "--max-positions",
                 str(a.prompt + a.max_tokens + 16), "--dtype", "bf16"]
        subprocess.run([a.lifl, "model", "generate", "--dir", model, *shape], check=True,
                       capture_output=True)
        kv_bytes = 8 * 2 * a.prompt * 8 * 64 * 2  # layers x K,V x tokens x kv heads x dims x BF16
        prompt_of = lambda i: [(i * 7919 + k * 31) % 31000 + 100 for k in range(a.prompt)]
        serve_args = ["--model", model, "--model-max-context", str(a.prompt + a.max_tokens + 16)]
        results = {}
        for name, agents, at in (
                ("one node, both stages", {"b": serve_args}, "b"),
                ("prefill node + decode node", {"p": [*serve_args, "--model-role", "prefill"],
                                                "d": [*serve_args, "--model-role", "decode"]}, "d")):
            cluster = Cluster(nodes=tuple(agents), warm_pool=3, agent_args=agents)
            try:
                deadline = time.monotonic() + 30
                while True:  # every node has heard where the model is served
                    listed = http_json(cluster.controller.url + "/v1/models")
                    served = {n["node"] for m in listed["data"] for n in m["nodes"]}
                    if served == set(agents):
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the model's nodes: {listed}")
                    time.sleep(0.2)
                time.sleep(1.0)
                results[name] = serve(cluster, at, prompt_of, a.requests, a.max_tokens)
            finally:
                cluster.close()
        base, split = results["one node, both stages"], results["prefill node + decode node"]
        if base[2] != split[2]:
            raise RuntimeError("the two ways generated different tokens")
        print(f"prompt {a.prompt} tokens, {a.max_tokens} generated, {a.requests} requests; "
              f"hand-off {kv_bytes / 2**20:.1f} MiB of KV (BF16)")
        print(f"{'':32}{'TTFT s (median)':>18}{'decode tok/s':>15}")
        for name, (ttft, rate, _) in results.items():
            print(f"{name:32}{ttft:18.3f}{rate:15.1f}")
        print(f"prefill elsewhere adds {1e3 * (split[0] - base[0]):.1f} ms to the first token "
              f"({split[0] / base[0]:.2f}x); the same tokens either way")


if __name__ == "__main__":
    main()
