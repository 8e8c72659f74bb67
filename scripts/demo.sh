#!/usr/bin/env bash
# The main job: set up the machine, build, and run a federated round of simulated clients
# through the platform (eBPF router, shared-memory store, real function processes), with
# progress and the result checked against a double-precision FedAvg.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
exec build/bin/lifl bench clients --clients "${LIFL_DEMO_CLIENTS:-50}" \
  --params "${LIFL_DEMO_PARAMS:-1000000}" --rounds "${LIFL_DEMO_ROUNDS:-3}" --fan-in 8 "$@"
