#!/usr/bin/env bash
# Build the BIDS-App image from the project's Dockerfile on a plain Debian 12 machine:
#
#   make image        (= scripts/container/build_image.sh [TAG], default localhost/bidsharmony:latest)
#
# Installs podman, buildah, debootstrap and runc when missing (root + apt-get), makes sure of
# a local debian:bookworm-slim base (pulled, or built with debootstrap), then `buildah bud`.
# Layers are cached in local container storage, so a second build only redoes what changed.
# The host's pip certificate bundle and wheel folder (PIP_CERT, PIP_FIND_LINKS) are passed
# in for the build only; with a torch wheel in PIP_FIND_LINKS, torch comes from there
# instead of the PyTorch CPU index.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tag=${1:-localhost/bidsharmony:latest}
base=${BASE_IMAGE:-localhost/debian:bookworm-slim}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}

missing=()
for tool in podman buildah runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        echo "build_image.sh: missing ${missing[*]}; install them (Debian: apt-get install podman buildah runc debootstrap)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman buildah runc debootstrap >/dev/null
fi

base=$("$here/base_image.sh" "$base")
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$root/bidsharmony/_version.py")

args=(--build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version")
if [[ -n ${PIP_CERT:-} && -f $PIP_CERT ]]; then
    args+=(--volume "$PIP_CERT:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
if [[ -n ${PIP_FIND_LINKS:-} && -d $PIP_FIND_LINKS ]]; then
    args+=(--volume "$PIP_FIND_LINKS:/run/host-wheels:ro" --build-arg PIP_FIND_LINKS=/run/host-wheels)
    if compgen -G "$PIP_FIND_LINKS/torch-*cpu*.whl" >/dev/null; then
        args+=(--build-arg TORCH_INDEX_URL=)
    fi
fi

start=$SECONDS
buildah bud --isolation chroot --network host --layers --tag "$tag" "${args[@]}" \
    --file "$root/Dockerfile" "$root"
# the name boutiques/bidsharmony.json gives as its container image
podman tag "$tag" "bidsharmony/bidsharmony:$version"
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "built $tag (also bidsharmony/bidsharmony:$version) in $((SECONDS - start)) s, $((size / 1000000)) MB"
