"""Benchmark deep-SCM image counterfactuals (Pawlowski et al. 2020, App. B); prints markdown.

Data: ``bidsharmony.datasets.template_space.make_template_scans`` when it is importable
(``--data template``), otherwise (``--data phantom``, and ``auto`` while that module is pending)
a template-space phantom with exact truth: an elliptic brain (larger for sex 1), a grey-matter
ring that thins with age, two lateral ventricles that widen with age, scanned at three sites
with different monotone intensity maps (linear, square-root, square) and Gaussian noise.
Traveling subjects are scanned at every site with identical anatomy.

Reported (all on the modelled axial slice(s), inside the brain):

* **reconstruction** — the counterfactual under the observed values (exact abduction of the
  low-level noise u; the paper's Table 1 MAE) and the decoder mean alone (``z`` from the
  encoder, no ``u``) — MAE in normalised [0, 1] units;
* **do(site = reference)** on traveling subjects: PSNR/SSIM against the same subject's
  reference-site scan for the raw scan, a linear baseline (robust min-max of the scan mapped
  to the reference site's median percentiles) and the deep-SCM counterfactual;
* **do(age = age + 10)**: change of the dark (CSF) area in the central third of the slice,
  compared with the phantom's true ventricle change (phantom only);
* training time and inference time per scan.

Run ``python benchmarks/bench_deepscm_image.py --help``.
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

SITE_MAPS = {"siteA": lambda x: 1000 * x, "siteB": lambda x: 600 * np.sqrt(x) + 80,
             "siteC": lambda x: 300 * x ** 2 + 20}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("auto", "phantom", "template"), default="auto")
    parser.add_argument("--n-subjects", type=int, default=60)
    parser.add_argument("--n-traveling", type=int, default=4)
    parser.add_argument("--slice-size", type=int, default=64)
    parser.add_argument("--n-slices", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench_deepscm_image.json")
    parser.add_argument("--figure", default=None, help="write a Fig. 5-like PNG of one traveling subject")
    return parser.parse_args(argv)


def phantom_anatomy(age, sex, shape=(72, 72, 3)):
    """Site-free slab (values in [0, 1]), brain mask and true ventricle volume (voxels)."""
    x, y = np.meshgrid(np.arange(shape[0]) - shape[0] / 2 + 0.5, np.arange(shape[1]) - shape[1] / 2 + 0.5,
                       indexing="ij")
    a, b = 28.0 + 2 * sex, 32.0 + 2 * sex
    rho = np.hypot(x / a, y / b)
    brain = rho < 1
    cortex = 0.12 - 0.0008 * (age - 20)                 # grey matter thins with age
    plane = np.where(brain, np.where(rho > 1 - cortex, 0.55, 0.9), 0.0)
    width = 2.0 + 0.06 * (age - 20)                     # ventricles widen with age
    ventricles = np.zeros_like(brain)
    for side in (-1, 1):
        ventricles |= np.hypot((x - side * (width + 1.5)) / width, y / 12.0) < 1
    plane = np.where(ventricles & brain, 0.12, plane)
    volume = np.repeat(plane[..., None], shape[2], axis=2).astype(np.float32)
    mask = np.repeat(brain[..., None], shape[2], axis=2)
    return volume, mask, float((ventricles & brain).sum() * shape[2])


def make_phantom(n_subjects, n_traveling, seed):
    from bidsharmony.harmonize.image_base import ImageSet

    rng = np.random.default_rng(seed)
    images, masks, rows = [], [], []
    sites = list(SITE_MAPS)

    def scan(pid, site, age, sex):
        volume, mask, ventricles = phantom_anatomy(age, sex)
        noisy = np.clip(volume + rng.normal(0, 0.02, volume.shape), 0, 1) * mask
        images.append((SITE_MAPS[site](noisy) * mask).astype(np.float32))
        masks.append(mask)
        rows.append({"participant_id": pid, "session_id": f"ses-{site}", "site": site, "age": age, "sex": sex,
                     "brain_volume": float(mask.sum() * 64.0), "ventricle_volume": ventricles * 64.0})
    for i in range(n_subjects):
        site = sites[i % 3]
        low = {"siteA": 20, "siteB": 35, "siteC": 50}[site]          # age confound across sites
        scan(f"sub-{i:03d}", site, float(rng.uniform(low, low + 35)), int(rng.integers(0, 2)))
    for j in range(n_traveling):
        age, sex = float(rng.uniform(35, 65)), j % 2
        for site in sites:
            scan(f"sub-T{j + 1:02d}", site, age, sex)
    covariates = pd.DataFrame(rows)
    covariates["traveling"] = covariates.participant_id.str.startswith("sub-T")
    return ImageSet(images, masks, covariates, np.diag([4.0, 4.0, 4.0, 1.0])), "siteA"


def load_data(args):
    if args.data in ("auto", "template"):
        try:
            from bidsharmony.datasets.template_space import make_template_scans
        except ImportError:
            if args.data == "template":
                raise
        else:
            data = make_template_scans(n_subjects=args.n_subjects, n_sites=3, n_traveling=args.n_traveling,
                                       resolution=4, seed=args.seed)
            counts = data.scans.covariates.site.value_counts()
            return data.scans, str(sorted(counts.index)[0]), "template"
    scans, reference = make_phantom(args.n_subjects, args.n_traveling, args.seed)
    return scans, reference, "phantom"


def linear_to_reference(image, mask, scale, reference_scale):
    lo, hi = scale
    rlo, rhi = reference_scale
    return np.where(mask, (image - lo) / (hi - lo) * (rhi - rlo) + rlo, image)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    import torch

    torch.set_num_threads(args.threads)
    from bidsharmony.evaluation.images import psnr_in_mask, ssim_in_mask
    from bidsharmony.harmonize.deepscm_image import DeepSCMImage, dark_area, plot_counterfactuals
    from bidsharmony.harmonize.image_data import normalize_intensity

    scans, reference, kind = load_data(args)
    cov = scans.covariates
    traveling = cov.participant_id.str.startswith("sub-T").to_numpy()
    train = scans.subset(~traveling | (cov.site == reference).to_numpy())
    model = DeepSCMImage(slice_size=args.slice_size, n_slices=args.n_slices, latent_dim=args.latent_dim,
                         channels=args.channels, epochs=args.epochs, reference_site=reference,
                         random_seed=args.seed, num_threads=args.threads)
    started = time.perf_counter()
    model.fit(train)
    fit_seconds = time.perf_counter() - started

    rows, exact, decoder, age_rows = [], [], [], []
    inference = []
    slab = model.geometry_.slice_indices
    for k in range(len(cov)):
        row = cov.iloc[k].to_dict()
        observed = model.counterfactual(scans.images[k], scans.masks[k], row, {})
        inside = observed["slice_mask"]
        exact.append(np.abs(observed["counterfactual"] - observed["original"])[inside].mean())
        decoder.append(np.abs(observed["reconstruction"] - observed["original"])[inside].mean())
        if kind == "phantom" and not row["participant_id"].startswith("sub-T") and row["age"] < 80:
            older = model.counterfactual(scans.images[k], scans.masks[k], row, {"age": "+10"})
            true_change = (phantom_anatomy(row["age"] + 10, row["sex"])[2] - phantom_anatomy(row["age"], row["sex"])[2])
            age_rows.append({"dark_area_change": float(dark_area(older["counterfactual"], inside).sum()
                                                       - dark_area(older["original"], inside).sum()),
                             "true_ventricle_change_vox": true_change / 3 * len(slab),
                             "ventricle_node_change": older["counterfactual_values"]["ventricle_volume"]
                             - older["values"]["ventricle_volume"]})
        if not (traveling[k] and row["site"] != reference):
            continue
        ref = np.flatnonzero((cov.participant_id == row["participant_id"]).to_numpy() & (cov.site == reference).to_numpy())[0]
        t0 = time.perf_counter()
        harmonized, _ = model.transform_scan(scans.images[k], scans.masks[k], row["site"], row)
        inference.append(time.perf_counter() - t0)
        linear = linear_to_reference(scans.images[k], scans.masks[k], normalize_intensity(scans.images[k], scans.masks[k])[1],
                                     model.reference_scale_)
        target, mask = scans.images[ref][..., slab], scans.masks[ref][..., slab] & scans.masks[k][..., slab]
        for method, image in (("raw", scans.images[k]), ("linear", linear), ("deepscm", harmonized)):
            rows.append({"participant_id": row["participant_id"], "site": row["site"], "method": method,
                         "psnr": psnr_in_mask(target, image[..., slab], mask),
                         # 2D SSIM per modelled slice (a one-slice slab is too thin for a 3D window)
                         "ssim": float(np.mean([ssim_in_mask(target[..., j], image[..., z], mask[..., j])
                                                for j, z in enumerate(slab)]))})
        if args.figure and len(inference) == 1:
            results = {f"do(site={reference})": model.counterfactual(scans.images[k], scans.masks[k], row, {"site": reference}),
                       "do(age+10)": model.counterfactual(scans.images[k], scans.masks[k], row, {"age": "+10"}),
                       "do(sex)": model.counterfactual(scans.images[k], scans.masks[k], row, {"sex": 1 - int(row["sex"])}
                                                       if kind == "phantom" else {"age": "-10"})}
            plot_counterfactuals(results, args.figure)

    table = pd.DataFrame(rows).groupby("method")[["psnr", "ssim"]].mean().reindex(["raw", "linear", "deepscm"])
    summary = {"data": kind, "n_scans": len(cov), "n_train": len(train), "slice_size": args.slice_size,
               "epochs": args.epochs, "fit_seconds": fit_seconds,
               "inference_seconds_per_scan": float(np.mean(inference)) if inference else None,
               "mae_counterfactual_observed": float(np.mean(exact)), "mae_decoder_mean": float(np.mean(decoder)),
               "traveling": table.reset_index().to_dict(orient="records")}
    if age_rows:
        ages = pd.DataFrame(age_rows)
        summary["age_plus_10"] = {key: float(value) for key, value in ages.mean().items()}
        summary["age_plus_10"]["fraction_dark_area_increased"] = float((ages.dark_area_change > 0).mean())
    with open(args.out, "w") as handle:
        json.dump(summary, handle, indent=2)
    print(f"data: {kind}, {len(cov)} scans ({len(train)} for training), {args.slice_size}x{args.slice_size} slices, "
          f"{args.epochs} epochs; fit {fit_seconds:.0f} s, transform {summary['inference_seconds_per_scan']:.2f} s/scan\n")
    print("| reconstruction | MAE (normalised units) |\n|---|---|")
    print(f"| counterfactual under observed values (exact u) | {summary['mae_counterfactual_observed']:.2e} |")
    print(f"| decoder mean (z from encoder, no u) | {summary['mae_decoder_mean']:.4f} |\n")
    print("| traveling subjects vs reference-site scan | PSNR (dB) | SSIM |\n|---|---|---|")
    for method, values in table.iterrows():
        print(f"| {method} | {values.psnr:.2f} | {values.ssim:.3f} |")
    if age_rows:
        a = summary["age_plus_10"]
        print(f"\ndo(age+10): dark central area change {a['dark_area_change']:+.1f} px/slice-set "
              f"(true ventricle change {a['true_ventricle_change_vox']:+.1f} vox at the grid), increased in "
              f"{100 * a['fraction_dark_area_increased']:.0f} % of scans; ventricle node change "
              f"{a['ventricle_node_change']:+.0f} mm3")


if __name__ == "__main__":
    main()
