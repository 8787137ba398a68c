#!/usr/bin/env bash
# Container image figures for BENCHMARKS.md (issue 26): build time (cold or cached), image
# size, the docker-archive size Apptainer converts, and the wall time of the in-container check.
#
#   benchmarks/bench_container.sh [--cold]
#
# --cold removes every image from local container storage first (the base image and the
# cached layers too), as on a new machine. Run as root on Debian 12 (see scripts/container/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$root/scripts/container/containers.conf}
image=localhost/bidsharmony:latest
if [[ ${1:-} == --cold ]] && command -v podman >/dev/null; then
    podman rmi --all --force >/dev/null 2>&1 || true
fi
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB; $(date -u)"
start=$SECONDS
"$root/scripts/container/build_image.sh" "$image" | tail -n 1
build=$((SECONDS - start))
archive=$(mktemp -d)
podman save --format docker-archive --output "$archive/bidsharmony.tar" "$image" 2>/dev/null
echo "docker archive for apptainer build: $(( $(stat -c %s "$archive/bidsharmony.tar") / 1000000 )) MB"
rm -rf "$archive"
start=$SECONDS
"$root/scripts/container/check_image.sh" "$image" | tail -n 3
echo "build $build s (make image), check $((SECONDS - start)) s (make check-image)"
