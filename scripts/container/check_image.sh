#!/usr/bin/env bash
# Run the built image as a user would on HPC, and check it against a run outside it:
#
#   scripts/container/check_image.sh [IMAGE]      (default localhost/bidsharmony:latest; CI runs it)
#
# Inside the container: a read-only root filesystem, a uid that is not the image's user
# (12345, as Apptainer runs as the calling user), HOME pointing nowhere, the input dataset
# mounted read-only and only the output folder writable (the work folder inside it, -w).
# 1. `--version`; 2. the participant level on a small synthetic dataset (8 subjects, 2 sites,
# 4 mm), the same run outside the container beside it (same --random-seed); 3. the group level,
# inside with the command line the Boutiques descriptor generates (`bosh exec simulate`);
# 4. every output compared (scripts/container/compare_outputs.py: byte-identical images,
# tables, figures and reports; sidecars equal but for run times and the interpreter's
# version); 5. the input dataset byte-identical afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
image=${1:-localhost/bidsharmony:latest}
bin=${VENV_BIN:-$root/.venv/bin}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
export NIPYPE_NO_ET=1 OMP_NUM_THREADS=1
seed=7
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
start=$SECONDS

as_hpc_user=(--read-only --user 12345:12345 --env HOME=/nonexistent)
# the same numerical kernels inside as outside: OpenBLAS picks its kernels by CPU unless
# OPENBLAS_CORETYPE says otherwise (this CI host sets it), and two kernels round differently
[[ -n ${OPENBLAS_CORETYPE:-} ]] && as_hpc_user+=(--env "OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE")
input_checksums() { (cd "$bids" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }

inside=$(podman run --rm "${as_hpc_user[@]}" "$image" --version)
outside=$("$bin/bidsharmony" --version)
[[ $inside == "$outside" ]] || { echo "image reports '$inside', the checkout '$outside'" >&2; exit 1; }
echo "== $inside in $image (read-only, uid 12345)"

export TEMPLATEFLOW_HOME=$scratch/templateflow
"$bin/bidsharmony-templateflow" "$TEMPLATEFLOW_HOME" >/dev/null
# 8 scans: ComBat (intercept, site, age, sex) fitted on 4 leaves no residual degrees of freedom,
# and its pooled variance is then rounding noise
"$bin/bidsharmony-demo-data" "$scratch/data" --subjects 8 --sites 2 --resolution 4 --seed 0 \
    --traveling 0 >/dev/null
bids=$scratch/data/bids
input_checksums >"$scratch/input.sha256"
out=$scratch/inside  # mounted at the same path inside, so bosh finds the outputs it lists
mkdir -p "$scratch/outside" "$out"
chown 12345:12345 "$out" 2>/dev/null || chmod 777 "$out"
user_opts=("${as_hpc_user[@]}" --volume "$bids:/data/bids:ro" --volume "$out:$out")
participant=(participant --nprocs 1 --random-seed "$seed" --output-spaces MNI152NLin2009aSym:res-4
             --reg-quality fast)

echo "== participant level, inside and outside the container at once (one process each)"
podman run --rm "${user_opts[@]}" "$image" /data/bids "$out" "${participant[@]}" -w "$out/work" \
    >"$scratch/inside.log" 2>&1 &
inside_pid=$!
"$bin/bidsharmony" "$bids" "$scratch/outside" "${participant[@]}" -w "$scratch/work" \
    >"$scratch/outside.log" 2>&1 || { tail -n 30 "$scratch/outside.log"; exit 1; }
wait "$inside_pid" || { echo "participant level failed inside the container:"; tail -n 30 "$scratch/inside.log"; exit 1; }
tail -n 1 "$scratch/inside.log"

echo "== group level; inside, launched from the Boutiques descriptor"
# The descriptor's image name must be the image just built (build_image.sh tags both names).
descriptor=$root/boutiques/bidsharmony.json
named=$("$bin/python" -c "import json, sys; print(json.load(open(sys.argv[1]))['container-image']['image'])" "$descriptor")
[[ $(podman image inspect --format '{{.Id}}' "$named") == $(podman image inspect --format '{{.Id}}' "$image") ]] \
    || { echo "boutiques/bidsharmony.json names $named, which is not $image" >&2; exit 1; }
"$bin/bosh" validate "$descriptor" >/dev/null
cat >"$scratch/invocation.json" <<EOF
{"bids_dir": "/data/bids", "output_dir": "$out", "analysis_level": "group", "work_dir": "$out/work",
 "site_column": "site", "harmonizer": ["combat"], "min_site_size": 2, "random_seed": $seed}
EOF
if command -v docker >/dev/null; then
    # bosh drives the docker CLI; podman serves docker's API on a socket of our own.
    podman system service --time=0 "unix://$scratch/podman.sock" &
    service=$!
    for _ in $(seq 50); do [[ -S $scratch/podman.sock ]] && break; sleep 0.2; done
    mkdir -m 755 "$scratch/bosh"  # bosh mounts its working folder and writes its job script there
    (cd "$scratch/bosh" && DOCKER_HOST="unix://$scratch/podman.sock" "$bin/bosh" exec launch --no-pull \
        --skip-data-collection --no-automounts --container-opts "${user_opts[*]}" "$descriptor" \
        "$scratch/invocation.json") >"$scratch/inside-group.log" 2>&1 || true
    kill "$service"
    if [[ $(grep -A1 '^Exit code' "$scratch/inside-group.log" | tail -n 1) != 0 ]] \
        || grep -A5 '^Missing files' "$scratch/inside-group.log" | grep -q Required; then
        tail -n 30 "$scratch/inside-group.log"
        exit 1
    fi
    echo "bosh exec launch: exit code 0, the descriptor's outputs present"
else
    # no docker CLI for bosh to drive: run the command line bosh generates, with podman
    command=$("$bin/bosh" exec simulate "$descriptor" -i "$scratch/invocation.json" | grep '^bidsharmony ')
    read -r -a generated <<<"$command"
    podman run --rm "${user_opts[@]}" "$image" "${generated[@]:1}" >"$scratch/inside-group.log" 2>&1 \
        || { tail -n 30 "$scratch/inside-group.log"; exit 1; }
    echo "no docker CLI: ran the command line of bosh exec simulate with podman"
fi
"$bin/bidsharmony" "$bids" "$scratch/outside" group --site-column site --harmonizer combat \
    --min-site-size 2 --random-seed "$seed" -w "$scratch/work" >"$scratch/outside-group.log" 2>&1 \
    || { tail -n 30 "$scratch/outside-group.log"; exit 1; }

echo "== outputs inside vs outside"
"$bin/python" "$here/compare_outputs.py" "$scratch/outside" "$out" \
    --same-path "$bids=/data/bids" --same-path "$scratch/outside=$out"
input_checksums | cmp -s - "$scratch/input.sha256" \
    || { echo "the input dataset changed" >&2; exit 1; }
echo "input dataset byte-identical; container check done in $((SECONDS - start)) s"
