#!/usr/bin/env bash
# The test command: set up the machine, build, and run the whole suite with ctest
# (unit tests, and integration tests that start real `lifl up` processes on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --hugepages  # the DPDK router's tests need them
bash scripts/build.sh
cd build
ctest --output-on-failure --timeout 600 -j 2 "$@"
