#!/usr/bin/env bash
# Submit the participant level as a job array (one task per subject), then the group level
# as a job that starts only if every task succeeded (--dependency=afterok).
#
#   scripts/slurm/submit.sh BIDS_DIR OUTPUT_DIR [options]
#
# Options:
#   --subjects FILE        participant labels, one per line (default: participant_id of
#                          BIDS_DIR/participants.tsv, else the sub-* folders)
#   --participant-args S   extra bidsharmony options of the participant level (one string)
#   --group-args S         extra bidsharmony options of the group level; "none" skips the group job
#   --sbatch-args S        extra sbatch options of both jobs (account, partition, ...)
#   --array-sbatch-args S  extra sbatch options of the array only (e.g. "-c 4 --mem=8G")
#   --max-running N        run at most N tasks at once (sbatch --array=1-M%N)
# Environment: BIDSHARMONY (command, e.g. an `apptainer run ...` line) and WORK_DIR pass
# through to the jobs (sbatch exports the environment).
# Prints "array_job=<id>" and "group_job=<id>" on the last lines.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bids_dir=${1:?usage: submit.sh BIDS_DIR OUTPUT_DIR [options]}
output_dir=${2:?usage: submit.sh BIDS_DIR OUTPUT_DIR [options]}
shift 2
subjects="" participant_args="" group_args="" sbatch_args="" array_args="" max_running=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --subjects) subjects=$2; shift 2 ;;
        --participant-args) participant_args=$2; shift 2 ;;
        --group-args) group_args=$2; shift 2 ;;
        --sbatch-args) sbatch_args=$2; shift 2 ;;
        --array-sbatch-args) array_args=$2; shift 2 ;;
        --max-running) max_running=$2; shift 2 ;;
        *) echo "submit.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
bids_dir=$(cd "$bids_dir" && pwd)
mkdir -p "$output_dir/logs"
output_dir=$(cd "$output_dir" && pwd)
logs=$output_dir/logs

# Freeze the subject list: task i processes line i even if participants.tsv changes later.
list=$logs/subjects-$(date -u +%Y%m%d-%H%M%S)-$$.txt
if [[ -n "$subjects" ]]; then
    grep -v '^[[:space:]]*$' "$subjects" | sed 's/^sub-//' > "$list"
elif [[ -f "$bids_dir/participants.tsv" ]]; then
    awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "participant_id") c = i; next }
                c && $c != "" { sub(/^sub-/, "", $c); print $c }' "$bids_dir/participants.tsv" > "$list"
else
    find "$bids_dir" -maxdepth 1 -type d -name 'sub-*' -printf '%f\n' | sed 's/^sub-//' | sort > "$list"
fi
# one task per subject: a label listed twice would make two tasks share Nipype folders
awk '!seen[$0]++' "$list" > "$list.tmp" && mv "$list.tmp" "$list"
n=$(wc -l < "$list")
if [[ $n -eq 0 ]]; then
    echo "submit.sh: no subject found (see $list)" >&2
    exit 2
fi
range="1-$n${max_running:+%$max_running}"

# shellcheck disable=SC2086  # option strings are meant to split into words
array_job=$(sbatch --parsable --array="$range" --output="$logs/slurm-participant-%A_%a.out" \
    $sbatch_args $array_args \
    "$here/participant_array.sbatch" "$list" "$bids_dir" "$output_dir" $participant_args)
array_job=${array_job%%;*}
echo "submitted the participant level: $n task(s), job $array_job (subjects in $list)"
echo "array_job=$array_job"
if [[ "$group_args" == "none" ]]; then
    exit 0
fi
# shellcheck disable=SC2086
group_job=$(sbatch --parsable --dependency="afterok:$array_job" --kill-on-invalid-dep=yes \
    --output="$logs/slurm-group-%j.out" $sbatch_args \
    "$here/group.sbatch" "$bids_dir" "$output_dir" $group_args)
group_job=${group_job%%;*}
echo "submitted the group level: job $group_job, after job $array_job succeeds"
echo "group_job=$group_job"
