#!/usr/bin/env python
"""Benchmark: what the registration presets cost and what they change on real scans (issue 19).

The participant level's slowest step is the SyN registration of the extracted brain to the
brain template. This script runs it alone, as the workflow does (N4 → deepbet → brain image
zeroed outside the mask → :func:`bidsharmony.interfaces.registration.registration_arguments`
onto the template brain with both masks), once per preset, on the real scans of
``../shared/data/real/bids`` (read from there, never copied), and scores each run against the
``standard`` one:

- wall and CPU seconds of antsRegistration (ITK threads = ``--threads``);
- the atlas warped into the scan (the workflow's ``atlas_to_native``: the reverse transform,
  generic-label interpolation): mean Dice of its labels and the median / 95th percentile of
  the relative difference of the label volumes (what the morphometry table reports);
- ``standard`` is run a second time with the next seed: how much two runs of the same preset
  differ is the yardstick for the other presets (ANTs' multithreaded Mattes MI is not
  repeatable run to run).

Presets: the package's (``REGISTRATION_PRESETS``) plus those defined in ``CANDIDATES`` below.

    NIPYPE_NO_ET=1 python benchmarks/bench_registration.py --out /tmp/bench_registration \\
        --scans chris elitionx --presets standard fast --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real_scans import DEFAULT_BIDS, preprocess, run_method  # noqa: E402

#: presets tried here before any goes into the package, in the package's (mm, iterations) form
CANDIDATES = {
    # linear stages stop at 2 mm (as in 'fast'), SyN keeps 'standard''s levels
    "linear2mm": {
        "linear": ((8, 1000), (4, 500), (2, 250)),
        "syn": ((8, 100), (4, 70), (2, 30)),
    },
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--bids", type=Path, default=DEFAULT_BIDS)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_registration"))
    parser.add_argument("--scans", nargs="+", default=["chris", "elitionx"],
                        help="T1w files whose name contains one of these")
    parser.add_argument("--presets", nargs="+", default=["standard", "fast", "linear2mm"])
    parser.add_argument("--threads", type=int, default=2, help="ITK threads (the workflow's --omp-nthreads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--template", default="MNI152NLin2009aSym", help="the participant level's default")
    parser.add_argument("--resolution", type=int, default=1)
    parser.add_argument("--atlas", default=None, help="default: the participant level's")
    return parser.parse_args(argv)


def brain_image(n4_file: str, mask_file: str, out: Path) -> str:
    image = nb.load(n4_file)
    data = np.asarray(image.dataobj, np.float32) * (np.asarray(nb.load(mask_file).dataobj) > 0)
    nb.Nifti1Image(data, image.affine).to_filename(out)
    return str(out)


def register(preset: str, brain: str, mask: str, template: dict, folder: Path, seed: int) -> dict:
    from bidsharmony.interfaces.registration import registration_arguments, run_registration
    from bidsharmony.interfaces.resampling import apply_transforms_files

    folder.mkdir(parents=True, exist_ok=True)
    prefix = str(folder / "from-T1w_to-template_")
    args = registration_arguments(template["template"], brain, prefix, str(folder / "warped.nii.gz"),
                                  reg_quality=preset, fixed_mask=template["template_mask"], moving_mask=mask,
                                  random_seed=seed)
    wall, cpu = time.perf_counter(), time.process_time()
    run_registration(args)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    atlas = apply_transforms_files(template["atlas_dseg"], brain, [f"{prefix}InverseComposite.h5"],
                                   str(folder / "atlas_native.nii.gz"), interpolation="genericLabel")
    return {"seconds": wall, "cpu_seconds": cpu, "atlas": atlas["output_image"]}


def compare(labels_file: str, reference_file: str) -> dict:
    """Mean label Dice and the relative label-volume differences of ``labels_file`` vs ``reference_file``."""
    labels = np.asarray(nb.load(labels_file).dataobj).astype(int)
    reference = np.asarray(nb.load(reference_file).dataobj).astype(int)
    dice, rel = [], []
    for label in np.setdiff1d(np.unique(reference), [0]):
        a, b = labels == label, reference == label
        dice.append(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))
        rel.append(abs(a.sum() - b.sum()) / b.sum())
    rel = np.asarray(rel) * 100
    return {"mean_dice": float(np.mean(dice)), "min_dice": float(np.min(dice)),
            "volume_diff_median_pct": float(np.median(rel)), "volume_diff_p95_pct": float(np.percentile(rel, 95))}


def main(argv=None) -> int:
    args = parse_args(argv)
    # ITK reads its thread count when antspyx loads; registration runs in this process
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    from bidsharmony.config import DEFAULT_ATLAS
    from bidsharmony.interfaces import registration
    from bidsharmony.templates.lookup import template_inputs

    registration.REGISTRATION_PRESETS.update(CANDIDATES)
    template, _ = template_inputs(args.template, args.resolution, args.atlas or DEFAULT_ATLAS)
    scans = sorted(p for p in args.bids.glob("sub-*/**/anat/*_T1w.nii*") if any(s in p.name for s in args.scans))
    rows = []
    for t1w in scans:
        name = t1w.name.split(".")[0]
        work = args.out / name
        pre = preprocess(t1w, work / "pre", args.threads)
        mask = run_method("deepbet", pre["n4"], work / "deepbet", argparse.Namespace(omp_nthreads=args.threads), {})
        brain = brain_image(pre["n4"], mask["mask"], work / "brain.nii.gz")
        runs = {"standard": register("standard", brain, mask["mask"], template, work / "standard", args.seed),
                "standard, next seed": register("standard", brain, mask["mask"], template, work / "standard_seed",
                                                args.seed + 1)}
        for preset in args.presets:
            if preset != "standard":
                runs[preset] = register(preset, brain, mask["mask"], template, work / preset, args.seed)
        for preset, run in runs.items():
            row = {"scan": name, "preset": preset, "seconds": run["seconds"], "cpu_seconds": run["cpu_seconds"],
                   **compare(run["atlas"], runs["standard"]["atlas"])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"\n| scan | preset | wall s | CPU s | atlas Dice vs standard (mean / min) | "
          f"label volume diff. median / p95 % |\n|---|---|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['scan']} | {r['preset']} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | "
              f"{r['mean_dice']:.4f} / {r['min_dice']:.3f} | {r['volume_diff_median_pct']:.2f} / "
              f"{r['volume_diff_p95_pct']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
