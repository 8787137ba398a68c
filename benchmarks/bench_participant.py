"""Participant level per subject: wall time, peak memory and accuracy against ground truth.

Generates a synthetic subject at each requested resolution, runs
``bidsharmony ... participant`` on it in a fresh process, and scores the outputs with
:mod:`bidsharmony.datasets.truth`. Prints a markdown table for BENCHMARKS.md.

    python benchmarks/bench_participant.py --resolutions 2 1 --out /tmp/bench_participant
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def node_seconds(work_dir: Path) -> dict:
    """Run time of every node that ran, from Nipype's result files in the work directory."""
    from nipype.pipeline.engine.utils import load_resultfile

    times = {}
    for result in sorted(work_dir.rglob("result_*.pklz")):
        runtime = getattr(load_resultfile(result), "runtime", None)
        duration = getattr(runtime, "duration", None)
        if duration is not None:
            times[result.parent.name] = times.get(result.parent.name, 0.0) + float(duration)
    return times


def run_one(resolution: float, out: Path, args) -> dict:
    from bidsharmony.datasets.synthetic import make_dataset
    from bidsharmony.datasets.truth import score_participant_outputs

    root = out / f"res-{resolution:g}mm"
    dataset = make_dataset(root / "data", n_subjects=1, n_sites=1, resolution=resolution, seed=args.seed, n_traveling=0)
    template_res = 1 if resolution < 1.5 else 2
    command = [
        sys.executable, "-m", "bidsharmony", str(dataset.bids_dir), str(root / "out"), "participant",
        "--output-spaces", f"MNI152NLin2009aSym:res-{template_res}", "--reg-quality", args.reg_quality,
        "--omp-nthreads", str(args.omp_nthreads), "--nprocs", "1", "-w", str(root / "work"),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scores = score_participant_outputs(root / "out", dataset.truth_dir).iloc[0]
    return {
        "nodes": node_seconds(root / "work"),
        "resolution": f"{resolution:g} mm (template res-{template_res})",
        "wall_s": wall,
        # ru_maxrss is the largest single process; the run's processes are sequential.
        "peak_gb": max(peak_kb, before) / 1024**2,
        **{k: scores[k] for k in ("mask_dice", "CSF_dice", "GM_dice", "WM_dice", "median_abs_roi_volume_error_pct", "ICV_error_pct")},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", nargs="+", type=float, default=[2.0, 1.0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_participant"))
    parser.add_argument("--reg-quality", choices=("fast", "standard"), default="standard")
    parser.add_argument("--omp-nthreads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--node-times", type=int, default=8, help="list this many slowest nodes")
    args = parser.parse_args(argv)
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    os.environ.setdefault("TEMPLATEFLOW_HOME", str(args.out / "templateflow"))
    rows = [run_one(r, args.out, args) for r in args.resolutions]
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"Command: python benchmarks/bench_participant.py {' '.join(argv or sys.argv[1:])}\n")
    print("| resolution | wall (s) | peak RSS (GB) | mask Dice | CSF Dice | GM Dice | WM Dice | median abs ROI volume error (%) | ICV error (%) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['resolution']} | {r['wall_s']:.0f} | {r['peak_gb']:.2f} | {r['mask_dice']:.3f} | {r['CSF_dice']:.3f} | "
              f"{r['GM_dice']:.3f} | {r['WM_dice']:.3f} | {r['median_abs_roi_volume_error_pct']:.1f} | {r['ICV_error_pct']:+.1f} |")
    for r in rows:
        slowest = sorted(r["nodes"].items(), key=lambda item: -item[1])[:args.node_times]
        if slowest:
            print(f"\nSlowest nodes at {r['resolution']} (Nipype runtime; the rest is start-up, "
                  "scheduling and the nodes not listed):\n")
            print("| node | s |\n|---|---|")
            for node, seconds in slowest:
                print(f"| {node} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
