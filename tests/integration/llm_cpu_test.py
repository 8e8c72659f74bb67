"""The LLM forward pass on the CPU path (`lifl model generate`, `lifl model run`) against a
straightforward float64 numpy implementation of Hugging Face's Llama written here: RMSNorm,
rotate-half RoPE, grouped-query causal attention, SwiGLU, tied or untied head. Also: the
paged decode step agrees with a longer prefill, greedy generation is deterministic and is
numpy's argmax, and bad models and prompts are refused.

Tolerance: fp32 against float64 through 2-3 layers of a 64-wide model: the logits' largest
error is asserted below 1e-4 of their largest magnitude (a wrong RoPE pairing, head mapping
or norm moves them by 1e-2 of it or more). The KV cache holds BF16 by default (--kv-cache):
numpy rounds its K and V to BF16 likewise (to nearest even), and the same bound holds; with
--kv-cache f32 numpy keeps them. Rounding them or not moves these models' logits by 3e-4 to
1e-3 of the largest, asserted above 2x the bound, so that the bound tells the two apart."""
import json
import os
import tempfile
import unittest

import numpy as np

from lifl_client import decode_safetensors
from lifl_harness import lifl_cli as lifl

RTOL = 1e-4


def load(dir_):
    with open(os.path.join(dir_, "config.json")) as f:
        cfg = json.load(f)
    w = {}
    for name in sorted(os.listdir(dir_)):
        if name.endswith(".safetensors"):
            with open(os.path.join(dir_, name), "rb") as f:
                w.update({k: v.astype(np.float64) for k, v in decode_safetensors(f.read()).items()})
    return cfg, w


def to_bf16(x):
    """x rounded to BF16 (to nearest, ties to even), as float64."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def forward(cfg, w, tokens, kv_cache="bf16"):
    """Logits of every position, float64; K and V as the KV cache holds them."""
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kvh, hd, eps = cfg["num_key_value_heads"], cfg["head_dim"], cfg["rms_norm_eps"]
    n = len(tokens)

    def norm(x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g

    def rope(x, nh):  # x [n, nh*hd], rotate-half pairs (i, i + hd/2)
        x = x.reshape(n, nh, hd)
        inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2) / hd)
        ang = np.arange(n)[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., :hd // 2], x[..., hd // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1).reshape(n, nh * hd)

    x = w["model.embed_tokens.weight"][tokens]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = norm(x, w[p + "input_layernorm.weight"])
        q = rope(h @ w[p + "self_attn.q_proj.weight"].T, heads).reshape(n, heads, hd)
        k = rope(h @ w[p + "self_attn.k_proj.weight"].T, kvh).reshape(n, kvh, hd)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(n, kvh, hd)
        if kv_cache == "bf16":
            k, v = to_bf16(k), to_bf16(v)
        out = np.zeros((n, heads, hd))
        for hh in range(heads):
            g = hh // (heads // kvh)
            s = q[:, hh, :] @ k[:, g, :].T / np.sqrt(hd)
            s = s + np.triu(np.full((n, n), -np.inf), 1)
            pr = np.exp(s - s.max(axis=1, keepdims=True))
            pr /= pr.sum(axis=1, keepdims=True)
            out[:, hh, :] = pr @ v[:, g, :]
        x = x + out.reshape(n, heads * hd) @ w[p + "self_attn.o_proj.weight"].T
        h = norm(x, w[p + "post_attention_layernorm.weight"])
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return norm(x, w["model.norm.weight"]) @ head.T


class LlmCpu(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def model(self, name, *args):
        d = os.path.join(self.tmp.name, name)
        lifl("model", "generate", "--dir", d, *args)
        return d

    def logits(self, d, tokens, **extra):
        out = os.path.join(self.tmp.name, "logits.f32")
        args = ["model", "run", "--model", d, "--tokens", ",".join(map(str, tokens)),
                "--logits", out]
        for k, v in extra.items():
            args += [f"--{k.replace('_', '-')}", v]
        r = lifl(*args)
        return np.fromfile(out, dtype=np.float32), json.loads(r.stdout)["tokens"]

    def check_logits(self, got, ref, what):
        err = np.max(np.abs(got - ref)) / np.max(np.abs(ref))
        self.assertLess(err, RTOL, f"{what}: relative error {err:.2e}")

    def test_forward_matches_numpy(self):
        rng = np.random.default_rng(3)
        cases = [("gqa-f32", ["--layers", 2, "--heads", 4, "--kv-heads", 2]),
                 ("mha-bf16-tied", ["--layers", 3, "--heads", 4, "--kv-heads", 4, "--dtype", "bf16",
                                    "--tied", "--files", 3]),
                 ("mqa-f16-theta", ["--heads", 8, "--kv-heads", 1, "--dtype", "f16", "--rope-theta",
                                    500000, "--head-dim", 16, "--hidden", 96])]
        for name, args in cases:
            with self.subTest(model=name):
                d = self.model(name, "--seed", 7, *args)
                cfg, w = load(d)
                tokens = rng.integers(0, cfg["vocab_size"], 37).tolist()  # crosses 2 pages
                refs = {kv: forward(cfg, w, tokens, kv)[-1] for kv in ("bf16", "f32")}
                for kv, ref in refs.items():
                    got, _ = self.logits(d, tokens, max_tokens=1, kv_cache=kv)
                    self.check_logits(got, ref, f"{name}, --kv-cache {kv}")
                apart = np.max(np.abs(refs["bf16"] - refs["f32"])) / np.max(np.abs(refs["f32"]))
                self.assertGreater(apart, 2 * RTOL, f"{name}: rounding K and V matters")

    def test_quantised_weights_match_numpy(self):
        # --quantize: each layer's linear weights, symmetric per group of 128 inputs; numpy
        # quantises the same way here (fp32 division, rounding half away from zero) and
        # runs the float64 forward on the dequantised weights.
        d = self.model("quant", "--hidden", 128, "--intermediate", 256, "--heads", 4,
                       "--kv-heads", 2, "--seed", 13)
        cfg, w = load(d)
        tokens = list(range(3, 40, 2))
        full = forward(cfg, w, tokens)[-1]
        errors = {}
        for bits, qmax in ((8, 127), (4, 7)):
            qw = dict(w)
            for name, x in w.items():
                if name.endswith("_proj.weight"):
                    g = x.astype(np.float32).reshape(x.shape[0], -1, 128)
                    scale = (np.max(np.abs(g), axis=2, keepdims=True) / np.float32(qmax)).astype(np.float32)
                    r = g / scale
                    q = np.clip(np.sign(r) * np.floor(np.abs(r) + np.float32(0.5)), -qmax, qmax)
                    qw[name] = (scale * q.astype(np.float32)).reshape(x.shape).astype(np.float64)
            got, _ = self.logits(d, tokens, max_tokens=1, quantize=f"int{bits}")
            ref = forward(cfg, qw, tokens)[-1]
            self.check_logits(got, ref, f"int{bits}")
            errors[bits] = np.max(np.abs(ref - full)) / np.max(np.abs(full))
        # The quantisation itself: int4 moves the logits more than int8, and int8 little.
        self.assertLess(errors[8], 0.05)
        self.assertLess(errors[8], errors[4])
        r = lifl("model", "run", "--model", self.model("narrow", "--hidden", 64), "--tokens", "1",
                 "--quantize", "int4", check=False)
        self.assertIn("multiple of 128", r.stderr)

    def test_decode_steps_match_a_longer_prefill(self):
        d = self.model("steps", "--seed", 11)
        cfg, w = load(d)
        prompt = list(range(5, 20))  # 15 tokens: the decode steps cross into a second page
        steps, generated = self.logits(d, prompt, max_tokens=4)
        ref = forward(cfg, w, prompt + generated[:3])
        # The logits of the prompt and of the 3 decode steps, each against numpy's row.
        steps = steps.reshape(len(generated), -1)
        for i in range(len(generated)):
            self.check_logits(steps[i], ref[len(prompt) - 1 + i], f"step {i}")
        # Each generated token is numpy's argmax where the top two are clearly apart.
        for i, t in enumerate(generated):
            row = ref[len(prompt) - 1 + i]
            top2 = np.sort(row)[-2:]
            if top2[1] - top2[0] > 1e-3 * np.max(np.abs(row)):
                self.assertEqual(t, int(np.argmax(row)), f"token {i}")
        # Prefilling the prompt and the first 3 generated tokens gives the logits the decode
        # steps saw before the 4th.
        got, _ = self.logits(d, prompt + generated[:3], max_tokens=1)
        self.check_logits(got, ref[-1], "prefill of prompt + 3 generated")

    def test_kv_retrieval(self):
        # --kv-retrieval (LouisKV-style): with a budget above the context and a retrieval at
        # every step (tau above any cosine), every position is attended: the tokens are full
        # attention's. tau below any cosine retrieves once per layer; a small budget still
        # generates, attending to sinks, the chosen units and the recent window.
        d = self.model("kv", "--layers", "2", "--max-positions", "1024", "--seed", 3)
        prompt = [(i * 37) % 300 for i in range(300)]
        steps = 40

        def go(*extra):
            r = lifl("model", "run", "--model", d, "--tokens", ",".join(map(str, prompt)),
                     "--max-tokens", steps, *extra)
            return json.loads(r.stdout)

        full = go()["tokens"]
        every = go("--kv-retrieval", "budget=100000,tau=2")
        self.assertEqual(every["tokens"], full)
        self.assertEqual(every["retrievals"], 2 * (steps - 1))
        once = go("--kv-retrieval", "budget=64,tau=-2")
        self.assertEqual(once["retrievals"], 2)
        self.assertEqual(len(once["tokens"]), steps)
        small = go("--kv-retrieval", "budget=64,tau=0.5")
        self.assertTrue(2 <= small["retrievals"] <= 2 * (steps - 1))
        r = lifl("model", "run", "--model", d, "--tokens", "1", "--kv-retrieval", "tau=0.5",
                 check=False)
        self.assertIn("budget", r.stderr)

    def test_generation_is_deterministic(self):
        d = self.model("det", "--seed", 5)
        runs = [lifl("model", "run", "--model", d, "--tokens", "1,2,3", "--max-tokens", 12).stdout
                for _ in range(2)]
        self.assertEqual(runs[0], runs[1])
        sampled = [lifl("model", "run", "--model", d, "--tokens", "1,2,3", "--max-tokens", 12,
                        "--temperature", 1.0, "--seed", s).stdout for s in (9, 9, 10)]
        self.assertEqual(sampled[0], sampled[1], "same seed, same tokens")
        self.assertNotEqual(sampled[0], sampled[2], "another seed, other tokens")

    def test_bad_models_and_prompts_are_refused(self):
        d = self.model("bad", "--vocab", 300)
        r = lifl("model", "run", "--model", d, "--tokens", "1,300", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("bad_token", r.stderr)
        r = lifl("model", "run", "--model", os.path.join(self.tmp.name, "nowhere"), "--tokens", "1",
                 check=False)
        self.assertIn("model_not_found", r.stderr)
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        cfg["num_key_value_heads"] = 3  # 4 heads are not a multiple of 3
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f)
        r = lifl("model", "run", "--model", d, "--tokens", "1", check=False)
        self.assertIn("invalid_model", r.stderr)
        r = lifl("model", "generate", "--dir", os.path.join(self.tmp.name, "odd"), "--head-dim", 15,
                 check=False)
        self.assertIn("head_dim even", r.stderr)
        good = self.model("good")
        run = ("model", "run", "--model", good, "--tokens", "1")
        up = ("up", "--port", 0, "--model", good)
        for args, message in (
                ((*run, "--gemm", "fast"), "--gemm is cublas or exact"),
                ((*up, "--model-gemm", "fast"), "--model-gemm is cublas or exact"),
                ((*up, "--model-kv-handoff", "nvlink"), "--model-kv-handoff is ipc or host"),
                ((*run, "--kv-cache", "f16"), "--kv-cache is bf16 or f32"),
                ((*up, "--model-kv-cache", "int8"), "--model-kv-cache is bf16 or f32")):
            with self.subTest(flag=args[-2]):
                r = lifl(*args, check=False)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn(message, r.stderr)


if __name__ == "__main__":
    unittest.main()
