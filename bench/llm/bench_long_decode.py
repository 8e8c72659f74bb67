"""Decode at long context on the GPU, with and without KV retrieval (docs/benchmarks.md "LLM
KV retrieval"): a random model of Llama-3.2-1B's shape (as bench_decode.py) with room for
`--context` positions, a prompt of that many tokens, then greedy decode. LIFL runs
`lifl model run --device cuda --timing` three times in the same run: full attention over the
device-resident cache in BF16 pages (the default) and in fp32 pages (--kv-cache f32), and
`--kv-retrieval budget=B,tau=T` (the K/V in pinned host memory, a working set on the device). The first decode step, which moves a retrieving sequence's K/V to
the host and clusters it, is reported apart.

    python3 bench/llm/bench_long_decode.py --lifl build/bin/lifl [--context 32000] [--steps 64]
"""
import argparse
import json
import os
import subprocess
import tempfile
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lifl", default="build/bin/lifl")
    p.add_argument("--context", type=int, default=32000)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--retrieval", default="budget=2048,tau=0.7")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "llama-3.2-1b-shape")
        positions = (a.context + a.steps + 16 + 15) // 16 * 16
        subprocess.run([a.lifl, "model", "generate", "--dir", model, "--hidden", "2048",
                        "--intermediate", "8192", "--layers", "16", "--heads", "32",
                        "--kv-heads", "8", "--head-dim", "64", "--vocab", "128256",
                        "--max-positions", str(positions), "--rope-theta", "500000", "--tied",
                        "--dtype", "bf16"], check=True, capture_output=True)
        prompt = os.path.join(tmp, "prompt.txt")
        with open(prompt, "w") as f:
            f.write(",".join(str(100 + (i * 7919) % 100000) for i in range(a.context)))
        results = {}
        for name, extra in (("full attention", []),
                            ("full attention, fp32 KV", ["--kv-cache", "f32"]),
                            (f"retrieval {a.retrieval}", ["--kv-retrieval", a.retrieval])):
            t0 = time.time()
            r = subprocess.run([a.lifl, "model", "run", "--model", model, "--device", "cuda",
                                "--tokens-file", prompt, "--max-tokens", str(a.steps + 2), "--timing",
                                *extra], capture_output=True, text=True)
            if r.returncode != 0:
                print(name, "failed:", r.stderr[-2000:])
                return 1
            results[name] = json.loads(r.stdout.strip().splitlines()[-1])
            print(name, results[name], f"({time.time() - t0:.0f} s)", flush=True)
        print(f"\ncontext {a.context}, batch 1 | decode tok/s | ms a token | first step s | "
              "retrievals")
        for name, res in results.items():
            rate = res["decode_tokens_per_second"]
            print(f"{name} | {rate:.1f} | {1e3 / rate:.2f} | {res['first_step_seconds']:.1f} | "
                  f"{res.get('retrievals', '-')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
