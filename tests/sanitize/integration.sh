#!/usr/bin/env bash
# Integration tests under AddressSanitizer (leak detection on) + UndefinedBehaviorSanitizer:
# the `lifl` binary built with clang-16 in build-sanitize/, and a subset of the integration
# tests run against it (real processes: `lifl up`, its function instances, a controller and
# agents in network namespaces). Every process writes its sanitizer reports to files; a
# report from any of them, or a failed test, fails the run.
#
# -O0: the sanitized build of the Beast translation units takes minutes a file at -O1/-O2
# under clang (gateway.cc: 53 s at -O0 against 2m50 at -O1), and these tests are bound by
# processes and sockets, not by the optimiser.
#
#   tests/sanitize/integration.sh [TEST ...]    (ctest sanitize.integration runs the default
#                                                subset in CI)
set -euo pipefail
cd "$(dirname "$0")/../.."
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  # Every integration test of tests/CMakeLists.txt but those that need a GPU or PyTorch
  # (gpu_round_test, llm_gpu_test, torch_test), chaos_test (20-trial loops; fault_test and
  # restart_test kill the same processes), and the packaging tests (no lifl process).
  tests=(fedavg_test strategies_test fedbuff_test store_exhaustion_test llm_cpu_test llm_api_test
         llm_tokenizer_test formats_test digits_test chains_test bad_input_test fault_test
         deadline_test scaling_test restart_test cli_test multinode_test auth_test tls_test
         cluster_auth_test cluster_tls_test cluster_llm_test cluster_disaggregated_test instance_user_test)
fi
build=build-sanitize
if [ ! -f "$build/build.ninja" ]; then
  # Boost 1.74's Asio does not detect C++20 coroutines under clang with libstdc++: told here.
  flags="-O0 -gline-tables-only -DLIFL_NO_CLONES -DBOOST_ASIO_HAS_CO_AWAIT=1 -DBOOST_ASIO_HAS_STD_COROUTINE=1"
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=None -DCMAKE_C_COMPILER=clang-16 \
    -DCMAKE_CXX_COMPILER=clang++-16 -DLIFL_CUDA=OFF -DLIFL_BUILD_BENCH=OFF \
    -DLIFL_SANITIZE="address;undefined" -DCMAKE_CXX_FLAGS="$flags" \
    -DCMAKE_C_FLAGS="-O0 -gline-tables-only" >/dev/null
fi
cmake --build "$build" --target lifl >/dev/null
reports="$(mktemp -d /tmp/lifl-sanitize.XXXXXX)"
trap 'rm -rf "$reports"' EXIT
export ASAN_SYMBOLIZER_PATH=/usr/bin/llvm-symbolizer  # (package llvm) reports with file:line
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:abort_on_error=1:log_path=$reports/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$reports/ubsan"
export LIFL_BIN="$PWD/$build/bin/lifl"
export PYTHONPATH="$PWD/clients/python:$PWD/tests/support"
status=0
(cd tests/integration && /usr/bin/python3 -m unittest "${tests[@]}") || status=$?
if compgen -G "$reports/*" >/dev/null; then
  for f in "$reports"/*; do
    echo "---- sanitizer report $(basename "$f") ----"
    head -60 "$f"
  done
  echo "sanitize.integration: sanitizer reports (above)" >&2
  exit 1
fi
[ "$status" -eq 0 ] || { echo "sanitize.integration: a test failed" >&2; exit "$status"; }
echo "sanitize.integration: ok (${tests[*]}), no sanitizer report"
