#!/usr/bin/env bash
# The Apptainer image for HPC, from the image `make image` built:
#
#   scripts/container/build_sif.sh [IMAGE] [SIF]   (defaults localhost/bidsharmony:latest, bidsharmony.sif)
#
# podman (or docker) saves the image as a docker archive; Apptainer converts it. Apptainer is
# packaged neither for Debian 12 nor on PyPI: where it is missing, the archive is left for
# `apptainer build SIF docker-archive://ARCHIVE` on a machine that has it (a cluster login node).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${1:-localhost/bidsharmony:latest}
sif=${2:-bidsharmony.sif}
archive=${sif%.sif}.tar
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}

if command -v podman >/dev/null; then
    podman save --format docker-archive --output "$archive" "$image"
else
    docker save --output "$archive" "$image"
fi
if command -v apptainer >/dev/null; then
    apptainer build "$sif" "docker-archive://$archive"
    rm -f "$archive"
    echo "built $sif"
else
    echo "apptainer is not installed here; copy $archive to a machine with Apptainer and run:"
    echo "  apptainer build $sif docker-archive://$archive"
fi
