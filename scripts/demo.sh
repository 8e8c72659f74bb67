#!/usr/bin/env bash
# The main job: set up the machine, build, and run a federated round of simulated clients
# through the platform (eBPF router, shared-memory store, real function processes), with
# progress and the result checked against a double-precision FedAvg; then train a real model
# (digits, 20 non-IID clients) through a fresh `lifl up` with fedavg, fedadam and the
# asynchronous fedbuff.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
build/bin/lifl bench clients --clients "${LIFL_DEMO_CLIENTS:-50}" \
  --params "${LIFL_DEMO_PARAMS:-1000000}" --rounds "${LIFL_DEMO_ROUNDS:-3}" --fan-in 8 "$@"

echo
echo "== federated training of a real model: digits, 20 non-IID clients, through lifl up =="
dir=$(mktemp -d)
build/bin/lifl up --port 0 --port-file "$dir/port" --data-dir "$dir/data" >"$dir/lifl.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 300); do  # 30 s at most
  [ -s "$dir/port" ] && curl -fs "http://127.0.0.1:$(cat "$dir/port")/readyz" >/dev/null && break
  sleep 0.1
done
PYTHONPATH=clients/python /usr/bin/python3 clients/python/examples/federated_digits.py \
  --url "http://127.0.0.1:$(cat "$dir/port")" --rounds "${LIFL_DEMO_TRAIN_ROUNDS:-10}" \
  --png build/digits-accuracy.png
