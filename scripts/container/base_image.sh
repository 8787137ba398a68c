#!/usr/bin/env bash
# Make sure the base image of the Dockerfile exists in local container storage.
#
#   scripts/container/base_image.sh [IMAGE]     (default: localhost/debian:bookworm-slim)
#
# Kept when already there; else pulled from docker.io when a registry answers; else built
# from Debian packages with debootstrap (minbase bookworm, ~1 min), so a machine that
# reaches only Debian's mirror can build the image. Prints the image name it made sure of.
set -euo pipefail
image=${1:-localhost/debian:bookworm-slim}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd "$(dirname "$0")" && pwd)/containers.conf}

if podman image exists "$image"; then
    echo "$image"
    exit 0
fi
if timeout 60 podman pull -q docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
    podman tag docker.io/library/debian:bookworm-slim "$image"
    echo "$image"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "base_image.sh: no registry and no debootstrap; apt-get install debootstrap" >&2; exit 1; }
# The machine's own Debian mirror (deb822 or one-line sources), else deb.debian.org.
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v security | head -n 1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
echo "base_image.sh: debootstrap bookworm from $mirror (no registry reachable)" >&2
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"
# what debian:bookworm-slim also drops: apt lists and caches
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
tar -C "$rootfs" -c . | podman import --change 'CMD ["bash"]' - "$image" >/dev/null
echo "$image"
