"""Federated training of a real model through LIFL: softmax regression on the digits data set
that ships with scikit-learn (8x8 images, 10 classes, no download), split non-IID over 20
clients (each holds mostly two digits), trained locally with minibatch SGD in numpy, and
averaged by LIFL each round (fedavg, or fedadam's server step). With fedbuff the clients run
asynchronously at different speeds: each trains from the newest model it can get, pushes its
change, and LIFL steps the model after every 5 buffered changes, down-weighting stale ones.
Prints held-out accuracy per round (for fedbuff: per 20 client updates, a synchronous round's
worth) and, with --png, draws the curve.

    python3 federated_digits.py --url http://127.0.0.1:8080 --strategy fedavg --rounds 10
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from lifl_client import Client, LiflError

CLASSES, FEATURES = 10, 64


def load(seed=0, clients=20):
    """Non-IID shards: the training set sorted by label, cut into 2*clients shards, two per
    client; a stratified 20% held out for evaluation."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed,
                                                        stratify=y)
    order = np.argsort(y_train, kind="stable")
    shards = np.array_split(order, 2 * clients)
    rng = np.random.default_rng(seed)
    pick = rng.permutation(2 * clients)
    parts = [np.concatenate([shards[pick[2 * c]], shards[pick[2 * c + 1]]]) for c in range(clients)]
    return [(x_train[p], y_train[p]) for p in parts], (x_test, y_test)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def accuracy(model, x, y):
    return float((np.argmax(x @ model["w"] + model["b"], axis=1) == y).mean())


def train_locally(model, x, y, rng, epochs=2, lr=0.5, batch=16):
    w, b = model["w"].copy(), model["b"].copy()
    onehot = np.eye(CLASSES, dtype=np.float32)[y]
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // batch)):
            p = softmax(x[idx] @ w + b)
            g = p - onehot[idx]
            w -= lr * x[idx].T @ g / len(idx)
            b -= lr * g.mean(axis=0)
    return {"w": w.astype(np.float32), "b": b.astype(np.float32)}


def run(url, strategy="fedavg", rounds=10, clients=20, seed=0, job=None, log=print):
    """Trains through the platform at `url`; returns the held-out accuracy after each round."""
    parts, (x_test, y_test) = load(seed, clients)
    c = Client(url)
    job = job or f"digits-{strategy}"
    spec = {"id": job, "clients_per_round": clients, "rounds": rounds,
            "model": {"tensors": {"w": {"dtype": "F32", "shape": [FEATURES, CLASSES]},
                                  "b": {"dtype": "F32", "shape": [CLASSES]}}, "init": "zeros"},
            "strategy": {"name": strategy, **({"eta": 0.05} if strategy == "fedadam" else {})}}
    c.create_job(spec)
    rng = np.random.default_rng(seed)
    curve = []
    for r in range(rounds):
        model, _ = c.pull(job)
        for i, (x, y) in enumerate(parts):
            local = train_locally(model, x, y, rng)
            c.push(job, local, client=f"client-{i}", num_examples=len(x), round_=r)
        c.wait_round(job, r + 1, timeout=60)
        model, _ = c.pull(job)
        curve.append(accuracy(model, x_test, y_test))
        log(f"{strategy} round {r + 1:2d}: held-out accuracy {curve[-1]:.3f}")
    return curve


def run_async(url, rounds=10, clients=20, seed=0, job=None, log=print, buffer=5):
    """FedBuff: clients of log-normally spread speeds train concurrently in simulated time;
    each pushes `trained - pulled` tagged with the version it pulled, and pulls again. LIFL
    steps the model every `buffer` updates. Returns the held-out accuracy after every
    `clients` updates (a synchronous round's worth of work)."""
    import heapq
    parts, (x_test, y_test) = load(seed, clients)
    c = Client(url)
    job = job or "digits-fedbuff"
    c.create_job({"id": job, "clients_per_round": buffer, "rounds": rounds * clients // buffer,
                  "update": "delta",
                  "model": {"tensors": {"w": {"dtype": "F32", "shape": [FEATURES, CLASSES]},
                                        "b": {"dtype": "F32", "shape": [CLASSES]}},
                            "init": "zeros"},
                  "strategy": {"name": "fedbuff", "max_staleness": 10}})
    rng = np.random.default_rng(seed)
    speed = rng.lognormal(0.0, 0.5, clients)  # seconds of simulated time per local training

    def start(i, now):
        model, version = c.pull(job)
        local = train_locally(model, *parts[i], rng)
        delta = {k: local[k] - model[k] for k in model}
        heapq.heappush(running, (now + speed[i], i, version, delta))

    running = []
    for i in range(clients):
        start(i, 0.0)
    curve, pushed, stale = [], 0, 0
    while len(curve) < rounds:
        now, i, version, delta = heapq.heappop(running)
        try:
            c.push(job, delta, client=f"client-{i}", num_examples=len(parts[i][0]), round_=version)
            pushed += 1
        except LiflError as e:  # too stale for the job: start again from the newest model
            if e.code != "stale_update":
                raise
            stale += 1
        if pushed and pushed % clients == 0 and len(curve) < pushed // clients:
            c.wait_round(job, pushed // buffer, timeout=60)
            model, version = c.pull(job)
            curve.append(accuracy(model, x_test, y_test))
            log(f"fedbuff {pushed:3d} updates (version {version:2d}): held-out accuracy "
                f"{curve[-1]:.3f}")
        start(i, now)
    if stale:
        log(f"fedbuff: {stale} updates were too stale and trained again")
    return curve


def draw(curves, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, marker="o", label=name)
    ax.set_xlabel("round (fedbuff: 20 client updates)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("digits, 20 non-IID clients, through LIFL")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--strategy", action="append", choices=["fedavg", "fedadam", "fedbuff"],
                   help="repeat for several; default: all three")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--png", help="draw the accuracy curves into this file")
    a = p.parse_args(argv)
    curves = {s: (run_async(a.url, a.rounds) if s == "fedbuff" else run(a.url, s, a.rounds))
              for s in (a.strategy or ["fedavg", "fedadam", "fedbuff"])}
    if a.png:
        draw(curves, a.png)
        print(f"accuracy curves drawn in {a.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
