"""Benchmark BlindHarmony (Jeong et al. 2023) on the paper's simulated protocol; prints markdown.

Protocol (the paper's Table 1, on synthetic brains): the reference ("target") site's images are
the site-free brains of :mod:`bidsharmony.datasets.synthetic` (4 mm, brain voxels only),
min-max normalised inside the brain. Source domains are made from held-out subjects by a
monotone transform of the normalised image followed by min-max normalisation again:

* **Domain-Exp** ``exp(x)``, **Domain-Log** ``log(x + 0.1)``, **Domain-Gamma0.7** ``x ** 0.7``
  (the paper does not give the exp/log constants; these are our choice).

BlindHarmony is fitted on the training subjects' reference images only (it never sees a source
domain). Every method's output is compared inside the brain with the untransformed image:
PSNR (peak 1) and SSIM (scikit-image, 3D, data range 1).

Methods: **source** (no harmonization); **BlindHarmony**; **histogram matching**
(:class:`bidsharmony.images.histogram.HistogramMatching`, Nyúl & Udupa's piecewise-linear
landmark method, standard scale learnt from the same reference scans); **low-frequency replacement**
(SSIMH-like: the low spatial frequencies of each slice replaced by those of the mean training
slice, :func:`bidsharmony.images.blindharmony.lowfrequency_replacement`).

Traveling subjects (``--n-traveling``): :func:`bidsharmony.datasets.synthetic.scan_image` scans
each traveler's anatomy at every site (monotone intensity map, bias field, Rician/Gaussian
noise; whole-head images, scored inside the brain). BlindHarmony is fitted on the reference
site's scans of the single-site subjects; the other sites' scans of the travelers are
harmonized and compared with the same traveler's reference-site scan (PSNR with the peak at
that scan's 99.5th brain percentile, SSIM on the brain scaled the same way). "source" is the
scan linearly mapped to the reference site's units (robust min-max onto the reference
scans' median percentiles), histogram matching maps its landmarks onto the reference standard scale.
These are scanner-space grids of one 4 mm geometry, not the template-space outputs of
``make_template_scans`` (pending ``bidsharmony.datasets.template_space``).

Run ``python benchmarks/bench_blindharmony.py --help``; the defaults take about 5 minutes on 2 cores.
``--baselines-only`` skips BlindHarmony (and the low-frequency replacement, which needs its mean
slices) and runs in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd

DOMAINS = {
    "exp": lambda x: np.exp(x),
    "log": lambda x: np.log(x + 0.1),
    "gamma0.7": lambda x: x ** 0.7,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=12, help="reference-site training subjects")
    parser.add_argument("--n-test", type=int, default=6, help="held-out subjects per source domain")
    parser.add_argument("--n-traveling", type=int, default=4, help="traveling subjects (0: skip that part)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--slice-size", type=int, default=32)
    parser.add_argument("--steps-per-level", type=int, default=2)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--beta1", type=float, default=1000.0)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--baselines-only", action="store_true",
                        help="only the source and histogram-matching rows (no BlindHarmony fit)")
    parser.add_argument("--output", default="bench_blindharmony.json", help="JSON file of the results")
    return parser.parse_args(argv)


def minmax(image, mask):
    lo, hi = image[mask].min(), image[mask].max()
    return np.where(mask, (image - lo) / (hi - lo), 0.0).astype(np.float32)


def make_brains(n, seed):
    """Site-free synthetic brains (normalised to [0, 1] inside the brain) and masks, 4 mm."""
    os.environ.setdefault("TEMPLATEFLOW_HOME", os.path.join(tempfile.gettempdir(), "bidsharmony-bench-tf"))
    from bidsharmony.datasets import synthetic

    model = synthetic.TemplateModel(resolution=4)
    sites = synthetic.make_sites(1, 4.0, seed)
    grid = synthetic.Grid(4.0)
    brains = []
    for subject in synthetic.make_subjects(n, sites, seed, 0):
        anatomy = synthetic.make_anatomy(subject, model, grid)
        brains.append((minmax(anatomy.sitefree, anatomy.mask), anatomy.mask))
    return brains


def fit_models(args, scans, reference):
    """BlindHarmony (None with ``--baselines-only``) and histogram matching fitted on ``scans``."""
    from bidsharmony.images.blindharmony import BlindHarmony
    from bidsharmony.images.histogram import HistogramMatching

    histogram = HistogramMatching(reference_site=reference).fit(scans)
    if args.baselines_only:
        return None, histogram, None
    model = BlindHarmony(reference_site=reference, epochs=args.epochs, slice_size=args.slice_size, levels=args.levels,
                         steps_per_level=args.steps_per_level, beta1=args.beta1, alpha=args.alpha,
                         num_iterations=args.iterations, random_seed=args.seed, num_threads=args.threads)
    started = time.perf_counter()
    model.fit(scans)
    return model, histogram, time.perf_counter() - started


def blindharmony_info(model, fit_seconds, n_scans):
    if model is None:
        return {"fit_seconds": None, "training_scans": n_scans}
    return {"fit_seconds": fit_seconds, "training_scans": n_scans, "slices_per_scan": int(len(model.mean_slices_)),
            "training_slices": int(len(model.mean_slices_) * n_scans), "final_bits_per_dim": model.history_[-1]}


def lowfrequency(image, mask, model):
    from bidsharmony.images.blindharmony import lowfrequency_replacement

    geometry = model.geometry_
    slices = geometry.to_slices(image)
    replaced = lowfrequency_replacement(slices, model.mean_slices_, cutoff=0.1)
    return np.where(mask, geometry.from_slices(replaced, image), image)


def scores(image, truth, mask):
    from skimage.metrics import structural_similarity

    psnr = 10 * np.log10(1.0 / np.mean((image[mask] - truth[mask]) ** 2))
    ssim = structural_similarity(np.where(mask, image, 0), np.where(mask, truth, 0), data_range=1.0)
    return float(psnr), float(ssim)


def run(args):
    import torch

    from bidsharmony.harmonize.image_base import ImageSet

    torch.set_num_threads(args.threads)
    brains = make_brains(args.n_train + args.n_test, args.seed)
    train, test = brains[:args.n_train], brains[args.n_train:]
    covariates = pd.DataFrame({"participant_id": [f"sub-{k:02d}" for k in range(len(train))], "session_id": "ses-1",
                               "site": "target", "age": 50.0, "sex": "F"})
    scans = ImageSet([1000 * b for b, _ in train], [m for _, m in train], covariates, np.eye(4))
    model, histogram, fit_seconds = fit_models(args, scans, "target")
    rows = []
    for domain, transform in DOMAINS.items():
        for k, (truth, mask) in enumerate(test):
            source = minmax(transform(truth), mask)
            # the reference site stores 1000 × the normalised image: back to the truth's units
            outputs = {"source": source, "histogram matching": histogram.transform_scan(source, mask, domain)[0] / 1000.0}
            seconds, info = None, {}
            if model is not None:
                started = time.perf_counter()
                harmonized, info = model.transform_scan(source, mask, domain)
                seconds = time.perf_counter() - started
                outputs.update({"BlindHarmony": harmonized / 1000.0,
                                "low-frequency replacement": lowfrequency(source, mask, model)})
            for method, image in outputs.items():
                psnr, ssim = scores(image, truth, mask)
                rows.append({"domain": domain, "subject": k, "method": method, "psnr": psnr, "ssim": ssim,
                             "seconds": seconds if method == "BlindHarmony" else None,
                             "ncc": info["ncc_with_source"] if method == "BlindHarmony" else None})
    return pd.DataFrame(rows), blindharmony_info(model, fit_seconds, len(train))


def run_traveling(args):
    """Travelers scanned at every site; harmonize the non-reference scans to the reference site."""
    import torch

    from bidsharmony.datasets import synthetic
    from bidsharmony.harmonize.image_base import ImageSet
    from bidsharmony.images.data import denormalize_intensity, normalize_intensity

    torch.set_num_threads(args.threads)
    model_t = synthetic.TemplateModel(resolution=4)
    sites = synthetic.make_sites(3, 4.0, args.seed)
    grid = synthetic.Grid(4.0)
    rng = np.random.default_rng(args.seed)
    reference = sites[0]["name"]
    images, masks, rows, travelers = [], [], [], []
    for subject in synthetic.make_subjects(3 * args.n_train, sites, args.seed, args.n_traveling):
        anatomy = synthetic.make_anatomy(subject, model_t, grid)
        if len(subject.sites) > 1:
            scans = {s["name"]: synthetic.scan_image(anatomy, s, rng).astype(np.float32) for s in sites}
            travelers.append((scans, anatomy.mask))
        elif subject.sites[0] == reference:
            images.append(synthetic.scan_image(anatomy, sites[0], rng).astype(np.float32))
            masks.append(anatomy.mask)
            rows.append({"participant_id": subject.participant_id, "session_id": "ses-1", "site": reference,
                         "age": subject.age, "sex": subject.sex})
    model, histogram, fit_seconds = fit_models(args, ImageSet(images, masks, pd.DataFrame(rows), grid.affine),
                                               reference)
    # the reference site's units: the median robust range of its scans (what BlindHarmony maps back to)
    reference_scale = np.median([normalize_intensity(i, m)[1] for i, m in zip(images, masks)], axis=0)
    results = []
    for k, (scans, mask) in enumerate(travelers):
        target = scans[reference]
        peak = np.percentile(target[mask], 99.5)
        for site in (s["name"] for s in sites[1:]):
            source = scans[site]
            outputs = {"source": np.where(mask, denormalize_intensity(normalize_intensity(source, mask)[0],
                                                                     reference_scale), source),
                       "histogram matching": histogram.transform_scan(source, mask, site)[0]}
            seconds = None
            if model is not None:
                started = time.perf_counter()
                outputs["BlindHarmony"] = model.transform_scan(source, mask, site)[0]
                seconds = time.perf_counter() - started
            for method, image in outputs.items():
                psnr, ssim = scores(np.clip(image / peak, 0, 1.5), np.clip(target / peak, 0, 1.5), mask)
                results.append({"domain": site, "subject": k, "method": method, "psnr": psnr, "ssim": ssim,
                                "seconds": seconds if method == "BlindHarmony" else None})
    info = blindharmony_info(model, fit_seconds, len(images))
    info["site_maps"] = {s["name"]: s["intensity"] for s in sites}
    return pd.DataFrame(results), info


def markdown_traveling(results, info):
    table = results.groupby(["method", "domain"], sort=False)[["psnr", "ssim"]].mean().unstack("domain")
    domains = list(results["domain"].unique())
    lines = ["| method | " + " | ".join(f"{d} → reference PSNR / SSIM" for d in domains) + " |",
             "|---|" + "---|" * len(domains)]
    for method in results["method"].unique():
        cells = [f"{table.loc[method, ('psnr', d)]:.2f} / {table.loc[method, ('ssim', d)]:.3f}" for d in domains]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if info["fit_seconds"] is not None:
        lines += ["", f"BlindHarmony fit on {info['training_scans']} reference scans: {info['fit_seconds']:.0f} s; "
                  f"harmonization {results['seconds'].dropna().mean():.2f} s per volume."]
    return "\n".join(lines)


def markdown(results, info, args, total):
    table = results.groupby(["method", "domain"], sort=False)[["psnr", "ssim"]].mean().unstack("domain")
    domains = list(DOMAINS)
    lines = ["| method | " + " | ".join(f"{d} PSNR / SSIM" for d in domains) + " | mean PSNR / SSIM |",
             "|---|" + "---|" * (len(domains) + 1)]
    for method in results["method"].unique():
        cells = [f"{table.loc[method, ('psnr', d)]:.2f} / {table.loc[method, ('ssim', d)]:.3f}" for d in domains]
        mean = results[results["method"] == method][["psnr", "ssim"]].mean()
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mean['psnr']:.2f} / {mean['ssim']:.3f} |")
    if info["fit_seconds"] is None:
        return "\n".join(lines + ["", f"Baselines only (no BlindHarmony fit); total {total:.0f} s."])
    per_scan = results["seconds"].dropna()
    lines += ["", f"BlindHarmony fit: {info['fit_seconds']:.0f} s ({info['training_slices']} slices of "
              f"{args.slice_size}², {args.epochs} epochs, final {info['final_bits_per_dim']:.3f} bits/dim); "
              f"harmonization {per_scan.mean():.2f} s per volume ({info['slices_per_scan']} slices, "
              f"{args.iterations} iterations); total {total:.0f} s."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    started = time.perf_counter()
    results, info = run(args)
    output = {"args": vars(args), "info": info, "results": results.to_dict(orient="records")}
    report = markdown(results, info, args, time.perf_counter() - started)
    if args.n_traveling:
        traveling, traveling_info = run_traveling(args)
        output["traveling"] = {"info": traveling_info, "results": traveling.to_dict(orient="records")}
        report += "\n\nTraveling subjects\n\n" + markdown_traveling(traveling, traveling_info)
    with open(args.output, "w") as handle:
        json.dump(output, handle, indent=1, default=str)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
