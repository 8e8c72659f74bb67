#!/usr/bin/env bash
# Configures build-fuzz/: clang-16 with AddressSanitizer and UndefinedBehaviorSanitizer (and
# libFuzzer's coverage), shared by tests/fuzz/run.sh and tests/sanitize/run.sh. Sourced from
# the repository root; sets $build.
build=build-fuzz
if [ ! -f "$build/build.ninja" ]; then
  # Boost 1.74's Asio does not detect C++20 coroutines under clang with libstdc++: told here.
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang-16 -DCMAKE_CXX_COMPILER=clang++-16 -DLIFL_CUDA=OFF \
    -DLIFL_BUILD_BENCH=OFF -DLIFL_FUZZ=ON -DLIFL_SANITIZE="address;undefined;fuzzer-no-link" \
    -DCMAKE_CXX_FLAGS="-DLIFL_NO_CLONES -DBOOST_ASIO_HAS_CO_AWAIT=1 -DBOOST_ASIO_HAS_STD_COROUTINE=1" \
    >/dev/null
fi
