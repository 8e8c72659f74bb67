#!/usr/bin/env bash
# The unit tests of the core libraries under AddressSanitizer + UndefinedBehaviorSanitizer
# (clang-16, in build-fuzz/ beside the fuzz targets): lifl_sanitized_tests, whose sources
# tests/CMakeLists.txt lists. Any sanitizer report fails the run (halt_on_error).
#
#   tests/sanitize/run.sh          (ctest sanitize.unit runs it in CI)
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/support/sanitizer_build.sh
cmake --build "$build" --target lifl_sanitized_tests >/dev/null
export ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
"$build/tests/lifl_sanitized_tests" --gtest_brief=1 \
  --gtest_filter=-AccumulateMany.Int8QueueMatchesSingleFolds  # see tests/CMakeLists.txt
