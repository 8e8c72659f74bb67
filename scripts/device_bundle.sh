#!/usr/bin/env bash
# Packs what the GPU machine runs (docs/gpu.md): that machine has CUDA's driver and PyTorch
# but not this project's Debian libraries, so the binaries built here (with nvcc, cudart
# linked statically) travel with the shared libraries they need beyond glibc, stripped, in
# build/device/. There: LD_LIBRARY_PATH=build/device/lib build/device/bin/...
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/device
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
for b in build/bin/lifl build/bin/bench_gpu build/bin/bench_attention build/bin/bench_gemv build/bin/bench_retrieval build/tests/lifl_unit_tests; do
  strip -o "$out/bin/$(basename "$b")" "$b"
  ldd "$b" | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*) ;;  # the host's glibc
      *) cp -L "$lib" "$out/lib/" ;;
    esac
  done
done
# lifl-run: the CLI with its libraries (function instances inherit the environment).
cat >"$out/bin/lifl-run" <<'WRAP'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/lifl" "$@"
WRAP
chmod +x "$out/bin/lifl-run"
# The device tool carries at most 64 MiB, working tree included, and the bundle alone has
# outgrown that: it travels as one archive (about 24 MB), unpacked there with
#   tar -xzf build/device.tar.gz -C build
tar -czf build/device.tar.gz -C build device
du -sh "$out" build/device.tar.gz
