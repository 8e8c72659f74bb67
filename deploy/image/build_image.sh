#!/usr/bin/env bash
# Builds the LIFL image (docs/kubernetes.md, "Image"), tagged lifl:dev.
#
#   deploy/image/build_image.sh --engine docker|podman
#     where an engine reaches a registry: builds deploy/image/Containerfile with it.
#   deploy/image/build_image.sh [OUT.tar]
#     without a registry (our machines), as root after ./scripts/build.sh: a Debian bookworm
#     root from debootstrap with the runtime libraries of the Containerfile's last stage, the
#     lifl binary built here and a non-root user 10001, committed by buildah to an OCI
#     archive (default build/image/lifl-image.tar). Load it with `kind load image-archive
#     OUT.tar` or `podman load -i OUT.tar`.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${1:-}" = "--engine" ]; then
  engine="${2:?--engine docker or podman}"
  exec "$engine" build -f deploy/image/Containerfile -t lifl:dev .
fi
out="$(realpath -m "${1:-build/image/lifl-image.tar}")"
work="$(dirname "$out")/rootfs"
runtime="libbpf1,libelf1,libicu72,libprometheus-cpp-core1.0,libssl3,libyaml-cpp0.7,libzip4"
runtime+=",librte-eal23,librte-ring23,librte-kvargs23,librte-telemetry23,ca-certificates"
[ -x build/bin/lifl ] || { echo "build_image: build/bin/lifl is missing: run ./scripts/build.sh" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
# The root is kept between builds, while its package list stays the same.
if [ ! -x "$work/usr/bin/apt-get" ] || [ "$(cat "$work/.lifl-runtime" 2>/dev/null)" != "$runtime" ]; then
  rm -rf "$work"
  debootstrap --variant=minbase --include="$runtime" bookworm "$work" http://deb.debian.org/debian >/dev/null
  chroot "$work" useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin lifl
  rm -rf "$work"/var/cache/apt/archives/*.deb "$work"/var/lib/apt/lists/* "$work"/usr/share/doc "$work"/usr/share/man
  echo "$runtime" >"$work/.lifl-runtime"
fi
install -m 0755 build/bin/lifl "$work/usr/local/bin/lifl"
export STORAGE_DRIVER=vfs  # no overlay mount needed where buildah runs
container="$(buildah from scratch)"
trap 'buildah rm "$container" >/dev/null 2>&1 || true' EXIT
buildah copy "$container" "$work/" / >/dev/null
buildah config --entrypoint '["lifl"]' --cmd '["--help"]' --user 10001 \
  --label org.opencontainers.image.title=lifl --label org.opencontainers.image.source=lifl "$container"
rm -f "$out"
buildah commit --quiet --format oci "$container" "oci-archive:$out:lifl:dev" >/dev/null
echo "build_image: $out ($(du -h "$out" | cut -f1), lifl:dev)"
