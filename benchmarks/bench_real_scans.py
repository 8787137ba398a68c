"""Brain extraction on the real scans: deepbet vs the template-registration (ants) path.

Runs only the first steps of the participant level on every T1w of the real development
dataset (``../shared/data/real/bids``, see its README; never copied into the repository):
validation → N4 → brain extraction with each ``--skull-strip`` method, and prints a
markdown table of mask volumes, the Dice between the two masks and the time of each step.

    python benchmarks/bench_real_scans.py --out /tmp/bench_real_scans
    python benchmarks/bench_real_scans.py --methods deepbet --scans elitionx chris
    python benchmarks/bench_real_scans.py --participant --out /tmp/bench_real_participant

``--participant`` runs the whole participant level with its defaults (as a user would:
``bidsharmony bids out participant -w work``) and tabulates, per scan, the time of each
step (from Nipype's result files), the peak memory of the worker processes, the mask,
brain and tissue volumes, the sanity checks, the agreement of the raw/normalised pair
(goal <= 2 %) and the coefficient of variation over the four head positions (goal <= 3 %).

Results are cached per scan and method in ``<out>/results.json`` (a second call with other
``--methods`` adds to the table); ``--force`` recomputes. The ants path uses the same
interface and settings as the workflow (``BrainExtraction`` on the brain template at
``--template-res``, ``--reg-quality``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nb
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BIDS = REPO.parent / "shared" / "data" / "real" / "bids"
METHODS = ("deepbet", "ants")


def _dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))


def _timed(interface, folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    outputs = interface.run(cwd=str(folder)).outputs
    return outputs, time.perf_counter() - start


def _mask_stats(mask_file) -> dict:
    img = nb.load(mask_file)
    voxels = int(np.count_nonzero(np.asanyarray(img.dataobj)))
    return {"mask": str(mask_file), "volume_ml": voxels * float(np.prod(img.header.get_zooms()[:3])) / 1000}


def preprocess(t1w: Path, work: Path, threads: int) -> dict:
    """Validation and N4, as the workflow runs them (cached in ``work``)."""
    from bidsharmony.interfaces.ants import N4BiasFieldCorrection
    from bidsharmony.interfaces.images import ValidateT1w

    done = work / "n4.json"
    if done.exists():
        return json.loads(done.read_text())
    valid, t_valid = _timed(ValidateT1w(in_file=str(t1w)), work / "validate")
    n4, t_n4 = _timed(N4BiasFieldCorrection(in_file=valid.out_file, num_threads=threads), work / "n4")
    img = nb.load(valid.out_file)
    info = {
        "valid": valid.out_file, "n4": n4.out_file, "validate_s": t_valid, "n4_s": t_n4,
        "shape": "×".join(str(s) for s in img.shape[:3]),
        "voxel": "×".join(f"{z:.3g}" for z in img.header.get_zooms()[:3]),
    }  # fmt: skip
    done.write_text(json.dumps(info))
    return info


def run_method(method: str, n4_file: str, work: Path, args, template: dict) -> dict:
    """One brain extraction of the N4-corrected image; mask file, volume, seconds."""
    if method == "deepbet":
        from bidsharmony.interfaces.skullstrip import DeepBetBrainExtraction

        out, seconds = _timed(DeepBetBrainExtraction(in_file=n4_file, num_threads=args.omp_nthreads), work / "deepbet")
    else:
        from bidsharmony.interfaces.ants import BrainExtraction

        out, seconds = _timed(
            BrainExtraction(
                in_file=n4_file, template=template["template"], template_mask=template["template_mask"],
                template_probsegs=template["template_probsegs"], reg_quality=args.reg_quality,
                num_threads=args.omp_nthreads,
            ),
            work / "ants",
        )  # fmt: skip
    return {**_mask_stats(out.out_mask), "seconds": seconds}


def node_seconds(work: Path) -> dict[str, dict[str, float]]:
    """Seconds of each participant-level node, per scan tag, from Nipype's result files."""
    import gzip
    import pickle

    times: dict[str, dict[str, float]] = {}
    for result in work.rglob("result_*.pklz"):
        parts = result.parent.relative_to(work).parts
        scan = next((p for p in parts if p.startswith("anat_") and p.endswith("_wf")), None)
        subject = next((p for p in parts if p.startswith("sub_") and p.endswith("_wf")), None)
        if scan is None or subject is None or result.parent.name.startswith("_"):
            continue
        with gzip.open(result) as handle:
            runtime = getattr(pickle.load(handle), "runtime", None)
        duration = getattr(runtime, "duration", None)
        if duration is not None:
            key = f"{subject[4:-3]}:{scan[5:-3]}"
            times.setdefault(key, {})[result.parent.name] = float(duration)
    return times


def participant(args) -> int:
    """The whole participant level with its defaults on the real set; markdown tables."""
    import resource
    import subprocess

    import pandas as pd

    out, work = args.out / "derivatives", args.out / "work"
    command = [
        str(Path(sys.executable).with_name("bidsharmony")), str(args.bids), str(out), "participant",
        "-w", str(work),
    ]  # fmt: skip
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    (args.out / "participant.log").write_text(run.stdout + run.stderr)
    print(f"`{' '.join(command)}`: exit {run.returncode}, {seconds:.0f} s wall, peak RSS of a process "
          f"{peak_gb:.2f} GB ({len(os.sched_getaffinity(0))} CPUs)")
    summary = [line for line in (run.stdout + run.stderr).splitlines() if ": OK" in line or "FAILED CHECKS" in line or "done in" in line]
    print("\n".join(f"    {line.split('bidsharmony')[-1]}" for line in summary))
    rows = []
    for sidecar in sorted(p for p in out.glob("sub-*/**/anat/*_desc-brain_mask.json") if "_space-" not in p.name):
        scan = sidecar.name.replace("_desc-brain_mask.json", "")
        meta = json.loads(sidecar.read_text())
        checks = {k: v for k, v in meta["QualityChecks"].items() if isinstance(v, dict)}
        morph = next(sidecar.parent.glob(f"{scan}_atlas-*_desc-volume_morph.tsv"))
        volumes = pd.read_csv(morph, sep="\t").iloc[0]
        rows.append({
            "scan": scan, "mask_mL": volumes["volume_ICV"] / 1000, "GM_mL": volumes["volume_GM"] / 1000,
            "WM_mL": volumes["volume_WM"] / 1000, "CSF_mL": volumes["volume_CSF"] / 1000,
            "failed": "; ".join(k for k, v in checks.items() if not v["Passed"]) or "none",
            "report": str(out / f"{scan.split('_')[0]}.html"),
        })  # fmt: skip
    table = pd.DataFrame(rows).set_index("scan")
    times = node_seconds(work)
    steps = ("validate", "n4", "deepbet", "brain_extraction", "registration", "segmentation", "atlas_to_native", "t1w_to_std")
    lines = ["| scan | mask mL | GM mL | WM mL | CSF mL | failed checks | " + " | ".join(f"{s} s" for s in steps) + " | report |",
             "|---|" + "---:|" * 4 + "---|" + "---:|" * len(steps) + "---|"]
    for scan, row in table.iterrows():
        subject, rest = scan.split("_", 1) if "_" in scan else (scan, "")
        tag = "_".join(p.replace("-", "_") for p in rest.split("_") if p.split("-")[0] in ("ses", "task", "acq", "ce", "rec", "run")) or "single"
        node = times.get(f"{subject[4:]}:{tag}", {})
        cells = " | ".join(f"{node[s]:.0f}" if s in node else "–" for s in steps)
        lines.append(f"| {scan} | {row.mask_mL:.0f} | {row.GM_mL:.0f} | {row.WM_mL:.0f} | {row.CSF_mL:.0f} | {row.failed} | {cells} | {row.report} |")
    print("\n".join(lines))
    pair = table[table.index.str.startswith("sub-prismaxa30")]
    if len(pair) == 2:
        raw, norm = pair.loc["sub-prismaxa30_rec-raw"], pair.loc["sub-prismaxa30_rec-norm"]
        diffs = {c: 100 * (raw[c] - norm[c]) / norm[c] for c in ("mask_mL", "GM_mL", "WM_mL", "CSF_mL")}
        print("raw vs normalised (prismaxa30), % of normalised: " + ", ".join(f"{k[:-3]} {v:+.2f} %" for k, v in diffs.items()))
    positions = table[table.index.str.startswith("sub-prisma2d")]
    if len(positions) > 1:
        cv = {c: 100 * positions[c].std(ddof=1) / positions[c].mean() for c in ("mask_mL", "GM_mL", "WM_mL", "CSF_mL")}
        print(f"four head positions (prisma2d), CV over {len(positions)} scans: " + ", ".join(f"{k[:-3]} {v:.1f} %" for k, v in cv.items()))
    return run.returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bids", type=Path, default=DEFAULT_BIDS, help="the real BIDS dataset")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_real_scans"), help="work folder and cache")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--scans", nargs="*", default=[], help="only T1w files whose name contains one of these")
    parser.add_argument("--template-res", type=int, default=1, help="template resolution of the ants path")
    parser.add_argument("--reg-quality", choices=("fast", "standard"), default="standard")
    parser.add_argument("--omp-nthreads", type=int, default=1, help="ITK and torch threads")
    parser.add_argument("--force", action="store_true", help="recompute cached results")
    parser.add_argument("--participant", action="store_true", help="the whole participant level, defaults")
    args = parser.parse_args(argv)
    if args.participant:
        return participant(args)

    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.omp_nthreads))
    from bidsharmony import templates

    template, _ = templates.template_inputs("MNI152NLin2009aSym", args.template_res, "Neuromorphometrics")
    args.out.mkdir(parents=True, exist_ok=True)
    cache_file = args.out / "results.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    scans = sorted(p for p in args.bids.glob("sub-*/**/anat/*_T1w.nii*"))
    scans = [p for p in scans if not args.scans or any(s in p.name for s in args.scans)]
    for t1w in scans:
        name = t1w.name.split(".")[0]
        work = args.out / name
        entry = cache.setdefault(name, {})
        try:
            entry.update(preprocess(t1w, work / "pre", args.omp_nthreads))
        except Exception as err:  # a refused scan is a result too
            entry["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            print(f"{name}: preprocessing failed: {entry['error']}", file=sys.stderr, flush=True)
            continue
        for method in args.methods:
            key = f"{method}_res-{args.template_res}_{args.reg_quality}" if method == "ants" else method
            if key in entry and not args.force:
                continue
            try:
                entry[key] = run_method(method, entry["n4"], work / key, args, template)
            except Exception as err:
                entry[key] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
                traceback.print_exc()
            print(f"{name} {key}: {entry[key]}", file=sys.stderr, flush=True)
            cache_file.write_text(json.dumps(cache, indent=1))
    print(table(cache, f"ants_res-{args.template_res}_{args.reg_quality}", args))
    return 0


def table(cache: dict, ants_key: str, args) -> str:
    lines = [
        f"Brain extraction on the real scans ({datetime.now(timezone.utc):%Y-%m-%d}, {platform.node()}, "
        f"{args.omp_nthreads} thread(s); ants = template registration to MNI152NLin2009aSym res-{args.template_res}, "
        f"'{args.reg_quality}'; deepbet threshold 0.5, CPU). Times exclude N4.",
        "",
        "| scan | voxel (mm) | grid | N4 s | deepbet mL | ants mL | Dice deepbet/ants | deepbet s | ants s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in sorted(cache.items()):
        if "error" in entry:
            lines.append(f"| {name} | | | | {entry['error']} | | | | |")
            continue
        deep, ants = entry.get("deepbet", {}), entry.get(ants_key, {})

        def cell(result, field, fmt):
            if "error" in result:
                return result["error"][:60]
            return format(result[field], fmt) if field in result else "–"

        overlap = "–"
        if "mask" in deep and "mask" in ants:
            overlap = f"{_dice(nb.load(deep['mask']).dataobj, nb.load(ants['mask']).dataobj):.3f}"
        lines.append(
            f"| {name} | {entry['voxel']} | {entry['shape']} | {entry['n4_s']:.0f} | {cell(deep, 'volume_ml', '.0f')} | "
            f"{cell(ants, 'volume_ml', '.0f')} | {overlap} | {cell(deep, 'seconds', '.1f')} | {cell(ants, 'seconds', '.0f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
