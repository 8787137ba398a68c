"""Scale-out: N subjects through a SLURM job array vs one process, on a local cluster.

Starts a single-node SLURM (``scripts/slurm/local_cluster.sh``, needs root, slurm-wlm and
munge), writes a synthetic dataset of N single-session subjects, then times the participant
level four ways: one process with the Linear plugin, one process with MultiProc, the job
array of ``scripts/slurm/submit.sh`` (one 1-CPU task per subject) and one process with
Nipype's SLURM plugin (one job per node). Checks the ROI tables are identical across modes.
Writes ``results.tsv``/``results.json`` and prints a markdown table for BENCHMARKS.md.

    sudo python benchmarks/bench_slurm.py --subjects 6 --out /tmp/bench_slurm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "slurm"


def _options(args) -> list[str]:
    return ["--output-spaces", f"MNI152NLin2009aSym:res-{args.template_res}", "--reg-quality", "fast",
            "--random-seed", "5", "--omp-nthreads", "1"]


def _roi_tables(out: Path) -> dict[str, pd.DataFrame]:
    return {p.relative_to(out).as_posix(): pd.read_csv(p, sep="\t")
            for p in sorted(out.glob("sub-*/**/anat/*_desc-volume_morph.tsv"))}


def _run_local(bids: Path, root: Path, extra: list[str], args, env) -> float:
    command = [sys.executable, "-m", "bidsharmony", str(bids), str(root / "out"), "participant",
               "-w", str(root / "work"), *_options(args), *extra]
    started = time.monotonic()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, cwd=root.parent)
    return time.monotonic() - started


def _run_array(bids: Path, root: Path, args, env) -> float:
    started = time.monotonic()
    submitted = subprocess.run(
        ["bash", str(SCRIPTS / "submit.sh"), str(bids), str(root / "out"), "--group-args", "none",
         "--array-sbatch-args", "--cpus-per-task=1 --mem=2G",
         "--participant-args", " ".join(o for o in _options(args) if o not in ("--omp-nthreads", "1"))],
        check=True, env=env, capture_output=True, text=True, cwd=root.parent,
    )
    job = next(line.split("=", 1)[1] for line in submitted.stdout.splitlines() if line.startswith("array_job="))
    while subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True).stdout.strip():
        time.sleep(1)
    wall = time.monotonic() - started
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True).stdout
    states = [w.split("=", 1)[1] for w in shown.split() if w.startswith("JobState=")]
    if set(states) != {"COMPLETED"}:
        raise RuntimeError(f"array job {job} ended {states}; see {root / 'out' / 'logs'}")
    return wall


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--resolution", type=float, default=4.0, help="voxel size of the synthetic scans (mm)")
    parser.add_argument("--template-res", type=int, default=4, help="TemplateFlow res of the registration target")
    parser.add_argument("--modes", nargs="+", default=["linear", "multiproc", "array", "nipype-slurm"],
                        choices=["linear", "multiproc", "array", "nipype-slurm"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_slurm"))
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)

    from bidsharmony.datasets.synthetic import make_dataset
    from bidsharmony.templates import ensure_offline_cache

    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    dataset = make_dataset(args.out / "data", n_subjects=args.subjects, n_sites=2, resolution=args.resolution,
                           seed=args.seed, n_traveling=0)
    env = dict(os.environ, NIPYPE_NO_ET="1", OMP_NUM_THREADS="1", MPLCONFIGDIR=str(args.out / "mpl"),
               TEMPLATEFLOW_HOME=str(ensure_offline_cache(args.out / "templateflow", (args.template_res,))),
               BIDSHARMONY=f"{sys.executable} -m bidsharmony", SLURM_CONF=str(args.out / "cluster" / "slurm.conf"))
    subprocess.run(["bash", str(SCRIPTS / "local_cluster.sh"), "start", str(args.out / "cluster")], check=True)
    cpus = os.cpu_count()
    descriptions = {
        "linear": "one process, Linear plugin (`--nprocs 1`)",
        "multiproc": f"one process, MultiProc (`--nprocs {cpus}`)",
        "array": f"SLURM job array, {args.subjects} tasks x 1 CPU (`scripts/slurm/submit.sh`)",
        "nipype-slurm": "one process, Nipype SLURM plugin (one sbatch job per node)",
    }
    rows, tables = [], {}
    try:
        for mode in args.modes:
            root = args.out / mode
            root.mkdir()
            if mode == "array":
                wall = _run_array(dataset.bids_dir, root, args, env)
            else:
                extra = {"linear": ["--nprocs", "1"], "multiproc": ["--nprocs", str(cpus)],
                         "nipype-slurm": ["--use-plugin", str(SCRIPTS / "nipype_slurm.yml")]}[mode]
                wall = _run_local(dataset.bids_dir, root, extra, args, env)
            tables[mode] = _roi_tables(root / "out")
            rows.append({"mode": descriptions[mode], "subjects": args.subjects, "wall_s": round(wall, 1)})
            print(f"{mode}: {wall:.0f} s", flush=True)
    finally:
        subprocess.run(["bash", str(SCRIPTS / "local_cluster.sh"), "stop", str(args.out / "cluster")])

    reference = tables[args.modes[0]]
    baseline = rows[0]["wall_s"]
    for row, mode in zip(rows, args.modes):
        same = sorted(tables[mode]) == sorted(reference) and len(reference) == args.subjects and all(
            tables[mode][k].equals(reference[k]) for k in reference
        )
        row.update(s_per_subject=round(row["wall_s"] / args.subjects, 1),
                   speedup=round(baseline / row["wall_s"], 2), roi_tables_identical=same)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "results.tsv", sep="\t", index=False)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "cpus": cpus,
            "python": platform.python_version(), "load_average": os.getloadavg(),
            "resolution_mm": args.resolution, "template_res": args.template_res}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\n{meta}\n")
    print("| mode | subjects | wall (s) | s / subject | speed-up vs first | ROI tables identical |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['mode']} | {row['subjects']} | {row['wall_s']:.0f} | {row['s_per_subject']:.1f} | "
              f"{row['speedup']:.2f} | {'yes' if row['roi_tables_identical'] else 'NO'} |")


if __name__ == "__main__":
    main()
