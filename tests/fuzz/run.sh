#!/usr/bin/env bash
# Builds the libFuzzer targets with clang, AddressSanitizer and UndefinedBehaviorSanitizer in
# build-fuzz/ and runs each for SECONDS (default 15) over a copy of its seed corpus
# (tests/fuzz/corpus/<target>). A crash fails the run; its input is kept in
# build-fuzz/crashes/ and becomes a regression seed in the corpus.
#
#   tests/fuzz/run.sh [SECONDS]        (ctest fuzz.smoke runs it in CI; bench/ runs it longer)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-15}"
source tests/support/sanitizer_build.sh
targets=(fuzz_safetensors fuzz_job_spec fuzz_descriptor fuzz_update_headers)
cmake --build "$build" --target "${targets[@]}" >/dev/null
mkdir -p "$build/crashes"
for t in "${targets[@]}"; do
  work="$(mktemp -d)"
  cp -r "tests/fuzz/corpus/$t/." "$work/"
  echo "fuzz: $t for ${seconds}s over $(ls "$work" | wc -l) seeds"
  if ! "$build/bin/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$build/crashes/$t-" -print_final_stats=1 "$work" > "$build/$t.log" 2>&1; then
    tail -40 "$build/$t.log"
    echo "fuzz: $t FAILED (input in $build/crashes/)" >&2
    rm -rf "$work"
    exit 1
  fi
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$build/$t.log" | tr '\n' ' '
  echo
  rm -rf "$work"
done
echo "fuzz: ok"
