"""Decode tokens/s of the GPU path beside Hugging Face transformers on the same weights and
GPU, in the same run (docs/benchmarks.md "LLM"). A random model of Llama-3.2-1B's shape
(hidden 2048, 16 layers, 32 heads, 8 KV heads, head_dim 64, intermediate 8192, vocab 128256,
tied, BF16) is written by `lifl model generate`; both decode greedy after a 32-token prompt.

    python3 bench/llm/bench_decode.py --lifl build/bin/lifl [--steps 128] [--batches 1 16]
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
        ours, tensor = {}, {}

        def lifl_run(tokens, steps, batch, gemm):
            r = subprocess.run([a.lifl, "model", "run", "--model", model, "--device", "cuda",
                                "--tokens", ",".join(map(str, tokens)), "--max-tokens",
                                str(steps), "--batch", str(batch), "--timing", "--gemm", gemm],
                               capture_output=True, text=True, check=True)
            return json.loads(r.stdout.strip().splitlines()[-1])

        for b in a.batches:
            ours[b] = lifl_run(prompt, a.steps + 1, b, "exact")
            tensor[b] = lifl_run(prompt, a.steps + 1, b, "cublas")
            print("lifl", b, ours[b], tensor[b], flush=True)
        long_prompt = [100 + i % 1000 for i in range(512)]
        prefill = {g: min(lifl_run(long_prompt, 2, 1, g)["prefill_seconds"] for _ in range(3))
                   for g in ("exact", "cublas")}
        env = dict(os.environ)
        env.pop("LD_LIBRARY_PATH", None)
        hf = subprocess.run(["python3", "-c", HF, model, str(a.steps), *map(str, a.batches)],
                            capture_output=True, text=True, env=env)
        if hf.returncode != 0:
            print(hf.stderr[-2000:])
            return 1
        theirs = json.loads(hf.stdout.strip().splitlines()[-1])
        print("\nbatch | LIFL decode tok/s (exact) | (--gemm cublas) | transformers tok/s | ratio exact | ratio cublas")
        for b in a.batches:
            t = theirs[str(b)]
            e, c = ours[b]['decode_tokens_per_second'], tensor[b]['decode_tokens_per_second']
            print(f"{b:5d} | {e:25.1f} | {c:15.1f} | {t:18.1f} | {e / t:10.2f}x | {c / t:11.2f}x")
        tp = theirs["prefill"]
        print(f"\nprefill of 512 tokens: LIFL exact {512 / prefill['exact']:.0f} tok/s, "
              f"--gemm cublas {512 / prefill['cublas']:.0f} tok/s, transformers {512 / tp:.0f} tok/s "
              f"({tp / prefill['cublas']:.2f}x with cublas)")
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
