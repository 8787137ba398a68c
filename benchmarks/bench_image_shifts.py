"""Image harmonizers on scanner shifts with known truth (issue 22, point 1); prints markdown.

Sources: template-space T1w brains at 2 mm of

* **real scans** — the participant level's ``*_space-<template>_*desc-preproc_T1w`` and
  ``desc-brain_mask`` found under ``--derivatives`` (any folder of participant-level outputs on
  the template's res-2 grid, e.g. ``bidsharmony ../shared/data/real/bids OUT participant
  --output-spaces MNI152NLin2009aSym:res-2``);
* **synthetic scans** — :func:`bidsharmony.datasets.template_space.make_template_scans`
  (``--n-synthetic`` single-site subjects of one site, bias removed, same grid).

Every source is restricted to its brain mask and mapped linearly onto one reference scale (CSF
mean 150, WM mean 850, from a 3-class Gaussian mixture of its own brain,
:func:`bidsharmony.evaluation.image_shifts.normalize_to_reference_scale`): that is the
"unshifted" image. The sources are split by subject into a **reference site** (unshifted
images; ``--reference-subjects`` for the real ones, the first ``--n-synthetic-reference``
synthetic ones) and **test subjects**. Each shift kind of ``--shifts`` is one further "site":
its parameters are drawn once per seed (:func:`~bidsharmony.evaluation.image_shifts.draw_shift`)
and applied to every test subject (noise drawn per scan): (a) ``monotone`` exp/log/gamma maps of
the synthetic sites, (b) ``contrast`` tissue-dependent factors through tissue maps that are
not a function of the voxel's intensity — the participant level's Atropos probsegs warped to the
template with the scan's own transform (real), the true tissue labels (synthetic) — so voxels of
equal intensity but different tissue part (GM/WM ratio changed by 10-25 %), (c) ``bias`` smooth multiplicative field of 5-20 % amplitude,
(d) ``blur_noise`` 2.5-3.5 mm FWHM blur + 2-5 % Rician/Gaussian noise; (b)-(d) with a global
gain of 0.7-1.6 too, as scanners differ in units. ``identity`` (optional) is a site of the test
scans unshifted: what each method does to a scan that needs nothing (its floor).

Every method of ``--methods`` is fitted once per seed on all scans (reference site + shifted
test scans; histogram matching, BlindHarmony and Harmonizing Flows learn from the reference site
only, deep SCM models the site as a parent and needs every site), then harmonizes each shift
site's scans (``transform``: Harmonizing Flows adapts once per site on that site's scans). The
harmonized test scan is compared with the same subject's unshifted image inside the brain:
PSNR (peak = its range), SSIM (3-D, 7-voxel window), and the tissue volumes of a 3-class
Gaussian mixture fitted on the unshifted image and applied to both (mean absolute error over
CSF/GM/WM, %). ``none`` is the shifted scan itself. Seeds control the shifts and the models'
seeds; the subjects and the split stay the same.

Run ``python benchmarks/bench_image_shifts.py --help``; see the section printed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

SPACE = "MNI152NLin2009aSym"
METHODS = ("none", "histogram-matching", "blindharmony", "harmonizing-flows", "deepscm-image")
REFERENCE = "reference"

#: small settings of the flow methods (those of benchmarks/bench_blindharmony.py,
#: bench_harmonizing_flows.py' short run, bench_deepscm_image.py with fewer epochs), at the
#: packages' default slice size of 32 (deep SCM's default is 64)
SETTINGS = {
    "histogram-matching": {},
    "blindharmony": {"slice_size": 32, "epochs": 10, "levels": 2, "steps_per_level": 2, "num_iterations": 10},
    "harmonizing-flows": {"slice_size": 32, "flow_epochs": 6, "harmonizer_epochs": 15, "adaptation_iterations": 10},
    "deepscm-image": {"slice_size": 32, "epochs": 15},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--derivatives", type=Path, nargs="*", default=[],
                        help="folders of participant-level outputs with template-space T1w + brain masks (res-2)")
    parser.add_argument("--space", default=SPACE)
    parser.add_argument("--reference-subjects", nargs="*", default=None,
                        help="real subjects whose scans form the reference site (default: the first half, sorted)")
    parser.add_argument("--n-synthetic", type=int, default=12, help="synthetic subjects (0: none)")
    parser.add_argument("--n-synthetic-reference", type=int, default=8,
                        help="of them, how many form the reference site (the rest are test subjects)")
    parser.add_argument("--resolution", type=int, default=2, help="template resolution of the synthetic scans (mm)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shifts", nargs="+", default=["monotone", "contrast", "bias", "blur_noise"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--param", nargs="*", default=[], metavar="METHOD:KEY=VALUE",
                        help="override a method setting, e.g. blindharmony:epochs=20 (JSON values)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the flow methods")
    parser.add_argument("--out", type=Path, default=Path("bench_image_shifts.json"), help="JSON file of the results")
    return parser.parse_args(argv)


def settings(args) -> dict:
    out = {name: dict(values) for name, values in SETTINGS.items()}
    for item in args.param:
        method, _, assignment = item.partition(":")
        key, _, value = assignment.partition("=")
        if method not in out or not key:
            raise SystemExit(f"--param {item!r}: give METHOD:KEY=VALUE with METHOD one of {', '.join(out)}")
        try:
            out[method][key] = json.loads(value)
        except json.JSONDecodeError:
            out[method][key] = value
    return out


# ---------------------------------------------------------------------- sources
def load_real(derivatives: list[Path], space: str, shape) -> list[dict]:
    """Template-space T1w + mask of every scan under ``derivatives`` on the grid ``shape``."""
    import nibabel as nb

    found = []
    for root in derivatives:
        for path in sorted(root.glob(f"sub-*/**/anat/*_space-{space}_*desc-preproc_T1w.nii.gz")):
            mask_path = path.with_name(path.name.replace("desc-preproc_T1w", "desc-brain_mask"))
            if not mask_path.exists():
                continue
            image = nb.load(path)
            if tuple(image.shape) != tuple(shape):
                logging.warning("%s: grid %s is not the template's %s; skipped (use res-2)", path.name,
                                image.shape, tuple(shape))
                continue
            stem = path.name.split(f"_space-{space}")[0]
            found.append({"scan": stem, "subject": path.name.split("_")[0],
                          "image": np.asarray(image.dataobj, np.float32),
                          "mask": np.asarray(nb.load(mask_path).dataobj) > 0, "source": "real",
                          "tissues": warped_probsegs(path, stem, space)})
    return found


def warped_probsegs(template_t1w: Path, stem: str, space: str):
    """The participant level's native CSF/GM/WM probsegs on the template grid (3, X, Y, Z), or None.

    Atropos posteriors (with their MRF smoothing) carried through the scan's own
    T1w-to-template transform: tissue maps that are not a function of the voxel's intensity.
    """
    import tempfile

    import nibabel as nb

    from bidsharmony.interfaces.resampling import apply_transforms_files

    anat = template_t1w.parent
    subject_stem = stem
    xfm = anat / f"{subject_stem}_from-T1w_to-{space}_mode-image_xfm.h5"
    probsegs = [anat / f"{subject_stem}_label-{t}_probseg.nii.gz" for t in ("CSF", "GM", "WM")]
    if not xfm.exists() or not all(p.exists() for p in probsegs):
        logging.warning("%s: no native probsegs or transform; tissue maps from a mixture of the image", stem)
        return None
    out = []
    with tempfile.TemporaryDirectory() as scratch:
        for prob in probsegs:
            target = Path(scratch) / prob.name
            apply_transforms_files(str(prob), str(template_t1w), [str(xfm)], str(target))
            out.append(np.asarray(nb.load(target).dataobj, np.float64))
    out = np.clip(np.stack(out), 0.0, 1.0)
    return out / np.maximum(out.sum(axis=0, keepdims=True), 1.0)


def load_synthetic(n: int, resolution: int) -> tuple[list[dict], np.ndarray]:
    from bidsharmony.datasets.template_space import make_template_scans

    data = make_template_scans(n_subjects=max(n, 1), n_sites=1, n_traveling=0, resolution=resolution, seed=0)
    rows = data.scans.covariates
    scans = [{"scan": rows["participant_id"][k].replace("sub-", "sub-syn"), "subject": rows["participant_id"][k],
              "image": data.scans.images[k], "mask": data.scans.masks[k], "source": "synthetic",
              "age": float(rows["age"][k]), "sex": str(rows["sex"][k]), "tissues": data.tissues[k]}
             for k in range(n)]
    return scans, data.scans.affine


def prepare(scan: dict, seed: int = 0) -> dict:
    """Brain only, on the reference scale; tissue posteriors and the segmenter of the unshifted image."""
    from bidsharmony.evaluation import image_shifts

    mask = scan["mask"]
    raw = np.where(mask, scan["image"], 0.0)
    tissues = scan.get("tissues")
    if tissues is None:  # no tissue maps: the mixture's posteriors (a function of intensity alone)
        tissues = image_shifts.fit_tissue_model(raw, mask, seed).posteriors(raw, mask)
    unshifted = image_shifts.normalize_to_reference_scale(raw, mask, tissues)
    model = image_shifts.fit_tissue_model(unshifted, mask, seed)
    return {**scan, "unshifted": unshifted, "posteriors": tissues, "tissue_model": model,
            "labels": model.labels(unshifted, mask)}


# ---------------------------------------------------------------------- methods
def build(method: str, options: dict, seed: int, threads: int, grid_slices: tuple[int, int]):
    from bidsharmony.harmonize.image_base import image_harmonizer_class

    options = dict(options)
    if method == "deepscm-image" and "slab" not in options:
        options["slab"] = list(grid_slices)  # every axial slice of the brain
    return image_harmonizer_class(method)(reference_site=REFERENCE, random_seed=seed, num_threads=threads, **options)


def run_seed(seed: int, reference: list[dict], tests: list[dict], args, options: dict, affine) -> tuple[list, dict]:
    from bidsharmony.evaluation import image_shifts
    from bidsharmony.harmonize.image_base import ImageSet

    shift_params = {kind: image_shifts.draw_shift(kind, np.random.default_rng([seed, k]))
                    for k, kind in enumerate(image_shifts.SHIFT_KINDS) if kind in args.shifts}
    shifted = {kind: [image_shifts.apply_shift(t["unshifted"], t["mask"], params,
                                               np.random.default_rng([seed, 100 + k, j]), tissues=t["posteriors"])
                      for j, t in enumerate(tests)]
               for k, (kind, params) in enumerate(shift_params.items())}
    if "identity" in args.shifts:  # the test scans unshifted, as a site of their own: each method's floor
        shift_params["identity"] = {"kind": "identity"}
        shifted["identity"] = [t["unshifted"] for t in tests]

    def row(scan, site):
        return {"participant_id": scan["scan"], "site": site, "age": scan.get("age", 60.0),
                "sex": scan.get("sex", "F")}

    images = [r["unshifted"] for r in reference] + [img for kind in shifted for img in shifted[kind]]
    masks = [r["mask"] for r in reference] + [t["mask"] for kind in shifted for t in tests]
    covariates = pd.DataFrame([row(r, REFERENCE) for r in reference]
                              + [row(t, kind) for kind in shifted for t in tests])
    everything = ImageSet(images, masks, covariates, affine)
    union = np.flatnonzero(np.any(np.stack(masks), axis=(0, 1, 2)))
    slab = (int(union[0]), int(union[-1]) + 1)

    results, timing = [], {}
    for method in args.methods:
        started = time.perf_counter()
        model = None
        if method != "none":
            logging.info("seed %d: fitting %s", seed, method)
            model = build(method, options[method], seed, args.threads, slab).fit(everything)
        fit_seconds = time.perf_counter() - started
        apply_seconds = 0.0
        for kind in shifted:
            started = time.perf_counter()
            if model is None:
                outputs = shifted[kind]
            else:
                site_scans = ImageSet(shifted[kind], [t["mask"] for t in tests],
                                      pd.DataFrame([row(t, kind) for t in tests]), affine)
                outputs = [image for image, _ in model.transform(site_scans)]
            apply_seconds += time.perf_counter() - started
            for t, out in zip(tests, outputs):
                with np.errstate(divide="ignore"):
                    score = image_shifts.score_image(t["unshifted"], out, t["mask"], t["tissue_model"], t["labels"])
                results.append({"seed": seed, "method": method, "shift": kind, "source": t["source"],
                                "scan": t["scan"], **score})
        timing[method] = {"fit_s": fit_seconds, "apply_s_per_scan": apply_seconds / max(len(tests) * len(shifted), 1)}
        logging.info("seed %d: %s fit %.0f s, apply %.2f s/scan", seed, method, fit_seconds,
                     timing[method]["apply_s_per_scan"])
    return results, {"timing": timing, "shifts": shift_params}


# ---------------------------------------------------------------------- report
def table(results: pd.DataFrame, value: str, digits: int, methods, shifts) -> str:
    per_seed = results.groupby(["method", "shift", "seed"])[value].mean()
    header = "| method | " + " | ".join(shifts) + " |\n|---|" + "---|" * len(shifts)
    lines = [header]
    for method in methods:
        cells = []
        for kind in shifts:
            values = per_seed.loc[(method, kind)].to_numpy()
            if not np.all(np.isfinite(values)):
                cells.append("inf (identical)")
                continue
            cells.append(f"{values.mean():.{digits}f} ± {values.std(ddof=1) if len(values) > 1 else 0:.{digits}f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    options = settings(args)
    started = time.perf_counter()
    synthetic, affine = load_synthetic(args.n_synthetic, args.resolution) if args.n_synthetic else ([], None)
    if affine is None:
        from bidsharmony.datasets.template_space import make_template_scans

        affine = make_template_scans(1, 1, 0, args.resolution).scans.affine
    shape = synthetic[0]["image"].shape if synthetic else None
    real = load_real(args.derivatives, args.space, shape) if args.derivatives else []
    subjects = sorted({s["subject"] for s in real})
    chosen = args.reference_subjects if args.reference_subjects is not None else subjects[: max(len(subjects) // 2, 1)]
    chosen = {s if s.startswith("sub-") else f"sub-{s}" for s in chosen}
    sources = [prepare(s) for s in real + synthetic]
    reference = [s for s in sources if (s["source"] == "real" and s["subject"] in chosen)
                 or (s["source"] == "synthetic" and int(s["subject"][-3:]) <= args.n_synthetic_reference)]
    tests = [s for s in sources if not any(s is r for r in reference)]
    if not reference or not tests:
        raise SystemExit(f"{len(reference)} reference and {len(tests)} test scans: need at least one of each")
    logging.info("reference site: %s", ", ".join(s["scan"] for s in reference))
    logging.info("test scans: %s (%.0f s to prepare)", ", ".join(s["scan"] for s in tests),
                 time.perf_counter() - started)

    rows, per_seed = [], {}
    for seed in args.seeds:
        found, info = run_seed(seed, reference, tests, args, options, affine)
        rows += found
        per_seed[seed] = info
        total = time.perf_counter() - started
        report = {  # written after every seed, so an interrupted run keeps the seeds it finished
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "seeds": list(per_seed),
            "settings": options, "threads": args.threads, "machine": f"{platform.node()} {os.cpu_count()} CPUs",
            "total_s": total, "reference": [s["scan"] for s in reference], "tests": [s["scan"] for s in tests],
            "per_seed": {str(k): v for k, v in per_seed.items()}, "results": rows,
        }
        args.out.write_text(json.dumps(report, indent=1, default=float))
    results = pd.DataFrame(rows)
    shifts = [k for k in ("identity", "monotone", "contrast", "bias", "blur_noise") if k in args.shifts]

    print(f"\nreference site: {', '.join(report['reference'])}\ntest scans: {', '.join(report['tests'])}")
    print(f"seeds {args.seeds}, total {total:.0f} s; mean ± sd over seeds of the per-seed mean over test scans\n")
    for value, digits, title in (("psnr", 2, "PSNR (dB)"), ("ssim", 3, "SSIM"),
                                 ("volume_error", 1, "tissue-volume error (mean |%| over CSF/GM/WM)")):
        print(f"**{title}**\n\n{table(results, value, digits, args.methods, shifts)}\n")
    for source in ("real", "synthetic"):
        part = results[results["source"] == source]
        if len(part):
            for value, digits, title in (("psnr", 2, "PSNR (dB)"), ("volume_error", 1, "tissue-volume error (%)")):
                print(f"**{title}, {source} test scans only**\n\n{table(part, value, digits, args.methods, shifts)}\n")
    print("| method | fit (s) | apply (s per scan) |\n|---|---|---|")
    for method in args.methods:
        fits = [per_seed[s]["timing"][method]["fit_s"] for s in args.seeds]
        applies = [per_seed[s]["timing"][method]["apply_s_per_scan"] for s in args.seeds]
        print(f"| {method} | {np.mean(fits):.0f} ± {np.std(fits):.0f} | {np.mean(applies):.2f} ± {np.std(applies):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
