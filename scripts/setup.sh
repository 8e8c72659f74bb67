#!/usr/bin/env bash
# Idempotent machine set-up for LIFL on Debian 12 (bookworm), run as root.
# Installs the build and test dependencies and mounts the pseudo file systems the BPF
# programs need. Safe to run again: every step checks before it acts.
#
#   scripts/setup.sh [--hugepages [N]]
#
# --hugepages: also reserve N 2 MiB hugepages (default 256, 512 MiB) and mount hugetlbfs at
# /dev/hugepages, for `router: dpdk` (docs/dpdk.md) and `store.hugepages`. The test command
# passes it; a machine that never runs the DPDK router need not.
set -euo pipefail
hugepages=0
if [ "${1:-}" = "--hugepages" ]; then
  hugepages="${2:-256}"
fi

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  clang llvm lld
  libbpf-dev bpftool libelf-dev zlib1g-dev libzip-dev
  libdpdk-dev dpdk-dev
  libboost-dev prometheus-cpp-dev libyaml-cpp-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev libssl-dev
  python3-numpy python3-pip python3-venv python3-sklearn python3-matplotlib python3-torch
  python3-regex python3-cryptography libicu-dev yamllint
  debootstrap buildah podman runc
  clang-16 libclang-rt-16-dev
  iproute2 curl nginx-light
)
# The Kubernetes manifests' offline checks (tests/deploy): kubectl for `kubectl kustomize`,
# Node.js for the schema validation. A machine that has them from elsewhere keeps its own.
command -v kubectl >/dev/null || packages+=(kubernetes-client)
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bpffs holds pinned maps; tracefs is required by SEC("tracepoint/...") programs.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing

# Hugepages for the DPDK router: reserved only up to N (never lowered, so that a machine's
# own reservation stays), and hugetlbfs mounted where DPDK looks first.
if [ "$hugepages" -gt 0 ]; then
  have="$(cat /proc/sys/vm/nr_hugepages)"
  if [ "$have" -lt "$hugepages" ]; then echo "$hugepages" >/proc/sys/vm/nr_hugepages; fi
  got="$(cat /proc/sys/vm/nr_hugepages)"
  [ "$got" -ge "$hugepages" ] || echo "setup: only $got of $hugepages hugepages could be reserved" >&2
  mkdir -p /dev/hugepages
  mountpoint -q /dev/hugepages || mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages
fi

# The account function instances run as with `functions.user: lifl-fn` (docs/security.md):
# no login, no home, no password.
id -u lifl-fn >/dev/null 2>&1 ||
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin lifl-fn

# The schema validation's npm packages, pinned by deploy/validate/package-lock.json.
validate="$(dirname "$0")/../deploy/validate"
if [ ! -d "$validate/node_modules" ] || [ "$validate/package-lock.json" -nt "$validate/node_modules" ]; then
  npm ci --prefix "$validate" --no-audit --no-fund >/dev/null
  touch "$validate/node_modules"
fi

# nginx is only a benchmark baseline; never leave the distribution's default site running.
if systemctl is-active --quiet nginx 2>/dev/null; then systemctl stop nginx || true; fi
echo "setup: ok"
