"""Decode tokens/s of the GPU path beside Hugging Face transformers on the same weights and
GPU, in the same run (docs/benchmarks.md "LLM"). A random model of Llama-3.2-1B's shape
(hidden 2048, 16 layers, 32 heads, 8 KV heads, head_dim 64, intermediate 8192, vocab 128256,
tied, BF16) is written by `lifl model generate`; both decode greedy after a 32-token prompt.
LIFL runs three ways: the default (BF16 weights, tensor-core GEMM from 8 rows), --gemm exact
(fp32 activations everywhere), and --quantize int4 (W4A16); transformers runs BF16. The
default and int4 run again with LIFL_PDL=0 (every kernel waits for the one before to finish
before it is scheduled), the baseline of programmatic dependent launch.

    python3 bench/llm/bench_decode.py --lifl build/bin/lifl [--steps 128] [--batches 1 16]
                                      [--modes bf16 int4]

--modes runs only those of LIFL's modes (each run loads the model again: all five take
about 5 minutes on the H100, more than the device tool's 10-minute limit with transformers).
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
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--modes", nargs="+", default=None,
                   help="bf16, 'bf16 exact', int4, 'bf16 no PDL', 'int4 no PDL' (default: all)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "llama-3.2-1b-shape")
        t0 = time.time()
        subprocess.run([a.lifl, "model", "generate", "--dir", model, "--hidden", "2048",
                        "--intermediate", "8192", "--layers", str(a.layers), "--heads", "32",
                        "--kv-heads", "8", "--head-dim", "64", "--vocab", "128256",
                        "--max-positions", "2048", "--rope-theta", "500000", "--tied",
                        "--dtype", "bf16"], check=True, capture_output=True)
        print(f"model written in {time.time() - t0:.1f} s", flush=True)
        prompt = list(range(100, 132))

        def lifl_run(tokens, steps, batch, *extra, env=None):
            r = subprocess.run([a.lifl, "model", "run", "--model", model, "--device", "cuda",
                                "--tokens", ",".join(map(str, tokens)), "--max-tokens",
                                str(steps), "--batch", str(batch), "--timing", *extra],
                               capture_output=True, text=True, check=True,
                               env={**os.environ, **(env or {})})
            return json.loads(r.stdout.strip().splitlines()[-1])

        # The default (BF16 weights and KV pages, tensor-core GEMM from 8 rows), every linear
        # exact in fp32 activations, fp32 KV pages, and int4 weights (W4A16).
        modes = {"bf16": [], "bf16 exact": ["--gemm", "exact"],
                 "bf16 f32 KV": ["--kv-cache", "f32"], "int4": ["--quantize", "int4"],
                 "bf16 no PDL": [], "int4 no PDL": ["--quantize", "int4"]}
        if a.modes:
            unknown = set(a.modes) - set(modes)
            if unknown:
                p.error(f"unknown modes {sorted(unknown)}; known: {list(modes)}")
            modes = {m: modes[m] for m in a.modes}
        ours = {m: {} for m in modes}
        for b in a.batches:
            for m, extra in modes.items():
                env = {"LIFL_PDL": "0"} if m.endswith("no PDL") else None
                ours[m][b] = lifl_run(prompt, a.steps + 1, b, *extra, env=env)
                print("lifl", m, b, ours[m][b], flush=True)
        long_prompt = [100 + i % 1000 for i in range(512)]
        prefill = {m: min(lifl_run(long_prompt, 2, 1, *modes[m])["prefill_seconds"]
                          for _ in range(3)) for m in ("bf16", "bf16 exact") if m in modes}
        env = dict(os.environ)
        env.pop("LD_LIBRARY_PATH", None)
        hf = subprocess.run(["python3", "-c", HF, model, str(a.steps), *map(str, a.batches)],
                            capture_output=True, text=True, env=env)
        if hf.returncode != 0:
            print(hf.stderr[-2000:])
            return 1
        theirs = json.loads(hf.stdout.strip().splitlines()[-1])
        print("\nbatch | transformers BF16 tok/s | " +
              " | ".join(f"LIFL {m} tok/s (ratio)" for m in modes))
        for b in a.batches:
            t = theirs[str(b)]
            cells = []
            for m in modes:
                v = ours[m][b]["decode_tokens_per_second"]
                cells.append(f"{v:.1f} ({v / t:.2f}x)")
            print(f"{b:5d} | {t:.1f} | " + " | ".join(cells))
        tp = theirs["prefill"]
        print(f"\nprefill of 512 tokens: transformers {512 / tp:.0f} tok/s; " +
              "; ".join(f"LIFL {m} {512 / prefill[m]:.0f} tok/s ({tp / prefill[m]:.2f}x)"
                        for m in prefill))
    return 0


HF = r'''
import json, sys, time, torch
from transformers import LlamaForCausalLM
model_dir, steps, batches = sys.argv[1], int(sys.argv[2]), [int(b) for b in sys.argv[3:]]
m = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16).cuda().eval()
out = {}
for b in batches:
    ids = torch.arange(100, 132, device="cuda").repeat(b, 1)
    def gen(n):
        torch.cuda.synchronize(); t = time.perf_counter()
        m.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize(); return time.perf_counter() - t
    gen(4)
    full, one = min(gen(steps + 1) for _ in range(2)), min(gen(1) for _ in range(3))
    out[str(b)] = b * steps / (full - one)  # decode steps only: the prefill subtracted
ids = torch.tensor([[100 + i % 1000 for i in range(512)]], device="cuda")
def prefill():
    torch.cuda.synchronize(); t = time.perf_counter()
    with torch.no_grad():
        m(ids)
    torch.cuda.synchronize(); return time.perf_counter() - t
prefill()
out["prefill"] = min(prefill() for _ in range(3))
print(json.dumps(out))
'''

if __name__ == "__main__":
    raise SystemExit(main())
