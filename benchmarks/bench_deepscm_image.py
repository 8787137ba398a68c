"""Benchmark deep-SCM image counterfactuals (Pawlowski et al. 2020, App. B); prints markdown.

Data: ``bidsharmony.datasets.template_space.make_template_scans`` — registered, bias-corrected
template-space scans of the synthetic dataset (4 mm grid, 50 x 59 x 48), single-site subjects
whose age ranges differ by site, and traveling subjects scanned at every site. The brain and
ventricle volumes given to the model are the truth (``brain_volume_mm3``,
``ventricle_volume_mm3``), as the participant level's ROI volumes would be. The modelled axial
slices are the ``--n-slices`` consecutive slices with the most lateral-ventricle area in the
template's atlas.

Reported (all on the modelled slices, inside the brain):

* **reconstruction** — the decoder mean (``z`` from the encoder, no ``u``; the paper's Table 1
  MAE) and, as a correctness check only, the counterfactual under the observed values (exact
  abduction of the low-level noise u, the identity by construction) — MAE in normalised [0, 1]
  units;
* **do(site = reference)** on traveling subjects: PSNR/SSIM against the same subject's
  reference-site scan for the raw scan, a linear baseline (robust min-max of the scan mapped
  to the reference site's median percentiles) and the deep-SCM counterfactual;
* **do(age = age + years)** on the single-site scans: the change of the dark (CSF-like) pixel
  count and of the mean intensity inside the ventricle region (the template's lateral
  ventricles, dilated by two voxels) of the counterfactual slices, against the **true
  counterfactual**: the generator's own subject aged by the same years (its age-driven traits
  advanced, every other trait and the scan noise held fixed), scanned at the same site;
* training time and inference time per scan.

Run ``python benchmarks/bench_deepscm_image.py --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd

RESOLUTION = 4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-subjects", type=int, default=60)
    parser.add_argument("--n-traveling", type=int, default=4)
    parser.add_argument("--slice-size", type=int, default=64)
    parser.add_argument("--n-slices", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--kl-warmup", type=int, default=0)
    parser.add_argument("--min-log-scale", type=float, default=-6.0)
    parser.add_argument("--conditioning", choices=("all", "input"), default="all")
    parser.add_argument("--parent-weight", type=float, default=0.0)
    parser.add_argument("--years", type=float, default=10.0, help="do(age = age + years)")
    parser.add_argument("--dark-threshold", type=float, default=0.3, help="normalised intensity of 'dark' pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench_deepscm_image.json")
    parser.add_argument("--figure", default=None, help="write a Fig. 5-like PNG of one traveling subject")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------- data and truth
def ventricle_slab(n_slices: int) -> tuple[list[int], np.ndarray]:
    """The ``n_slices`` consecutive axial slices with most lateral ventricle, and that 3D mask."""
    from scipy import ndimage

    from bidsharmony.datasets import synthetic

    model = synthetic.TemplateModel(RESOLUTION)
    ids = [i for i, name in model.labels.items() if name.endswith("Lateral_Ventricle")]
    ventricles = np.isin(model.atlas, ids)
    area = ventricles.sum(axis=(0, 1))
    # at 4 mm ten years of atrophy widen the ventricles by well under a voxel: the change is
    # partial volume at their border, so the region reaches two voxels beyond the template's
    ventricles = ndimage.binary_dilation(ventricles, iterations=2)
    totals = np.convolve(area, np.ones(n_slices), mode="valid")
    start = int(np.argmax(totals))
    return [start, start + n_slices], ventricles


def older(subject, years: float):
    """The generator's subject ``years`` older: its age-driven traits advanced, all noise kept.

    Mirrors ``synthetic._draw_subject`` (regional change per year after ``AGE_RANGE[0]``, grey
    matter thinning after 30, medial-temporal thinning and the CSF rim after ``AGE_RANGE[0]``).
    """
    from bidsharmony.datasets import synthetic

    def after(start):
        return max(subject.age + years - start, 0.0) - max(subject.age - start, 0.0)
    extra = after(synthetic.AGE_RANGE[0])
    changes = {}
    for region in synthetic.REGIONS:
        changes[region.key] = float(np.clip(subject.region_change[region.key] + region.age_rate * extra, 0.0,
                                            1.5 if region.expand else 0.45))
    layers = dict(subject.layers_mm, csf_rim=float(np.clip(subject.layers_mm["csf_rim"] + 0.04 * extra, 1.0, 4.0)))
    return dataclasses.replace(
        subject, age=subject.age + years, region_change=changes, layers_mm=layers,
        gm_thinning=float(np.clip(subject.gm_thinning + 0.003 * after(30.0), 0, 0.4)),
        mtl_thinning=float(np.clip(subject.mtl_thinning + 0.004 * extra, 0, 0.5)))


def true_older_scans(args, data, years: float) -> list:
    """Per scan, the true counterfactual scan ``years`` older (same site, same noise draw).

    Replays :func:`make_template_scans` (same subjects, sites and noise stream) and checks
    that the replay of every observed scan is identical, so the truth cannot drift silently.
    """
    from bidsharmony.datasets import synthetic, template_space as ts

    model = synthetic.TemplateModel(RESOLUTION)
    grid = ts.TemplateGrid(float(RESOLUTION), template_shape=model.mask.shape, template_affine=model.affine)
    sites = synthetic.make_sites(3, float(RESOLUTION), args.seed, vary_geometry=False)
    by_name = {s["name"]: ts._without_bias(s) for s in sites}
    rng = np.random.default_rng([args.seed, 7])
    out = []
    for subject in synthetic.make_subjects(args.n_subjects, sites, args.seed, args.n_traveling):
        anatomy = synthetic.make_anatomy(ts._registered(subject, model), model, grid)
        aged = None if subject.traveling else synthetic.make_anatomy(ts._registered(older(subject, years), model),
                                                                     model, grid)
        for name in subject.sites:
            state = rng.bit_generator.state
            replay = synthetic.scan_image(anatomy, by_name[name], rng).astype(np.float32)
            if not np.array_equal(replay, data.scans.images[len(out)]):
                raise RuntimeError("the replay of make_template_scans differs from its scans; update true_older_scans")
            if aged is None:
                out.append(None)
                continue
            same_noise = np.random.default_rng()
            same_noise.bit_generator.state = state
            out.append(synthetic.scan_image(aged, by_name[name], same_noise).astype(np.float32))
    return out


def linear_to_reference(image, mask, scale, reference_scale):
    lo, hi = scale
    rlo, rhi = reference_scale
    return np.where(mask, (image - lo) / (hi - lo) * (rhi - rlo) + rlo, image)


# ---------------------------------------------------------------------- measures
def ventricle_measures(slices, region, threshold):
    """Dark-pixel count and mean intensity inside the ventricle region of normalised slices."""
    return float(((slices < threshold) & region).sum()), float(slices[region].mean())


def age_effect(model, scans, data, region_3d, args):
    """do(age + years) on single-site scans vs the true counterfactual scans."""
    from bidsharmony.images.data import normalize_intensity

    truth = true_older_scans(args, data, args.years)
    region = model.geometry_.to_slices(region_3d.astype(np.float32)) > 0.25
    cov = scans.covariates
    rows = []
    for k in range(len(cov)):
        row = cov.iloc[k].to_dict()
        if truth[k] is None or row["age"] + args.years > 90:
            continue
        cf = model.counterfactual(scans.images[k], scans.masks[k], row, {"age": f"+{args.years}"})
        inside = region & cf["slice_mask"]
        dark0, mean0 = ventricle_measures(cf["original"], inside, args.dark_threshold)
        dark1, mean1 = ventricle_measures(cf["counterfactual"], inside, args.dark_threshold)
        true_slices = model.geometry_.to_brain_slices(normalize_intensity(truth[k], scans.masks[k])[0],
                                                      scans.masks[k])[0]
        dark_t, mean_t = ventricle_measures(true_slices, inside, args.dark_threshold)
        rows.append({"model_dark_change": dark1 - dark0, "true_dark_change": dark_t - dark0,
                     "model_mean_change": mean1 - mean0, "true_mean_change": mean_t - mean0,
                     "ventricle_node_change_mm3": cf["counterfactual_values"]["ventricle_volume"]
                     - cf["values"]["ventricle_volume"]})
    return pd.DataFrame(rows)


def traveler_rows(model, scans, reference, k, slab):
    """PSNR/SSIM of raw, linear and deep-SCM against the traveler's reference-site scan."""
    from bidsharmony.evaluation.images import psnr_in_mask, ssim_in_mask
    from bidsharmony.images.data import normalize_intensity

    cov = scans.covariates
    row = cov.iloc[k].to_dict()
    ref = np.flatnonzero((cov.participant_id == row["participant_id"]).to_numpy() & (cov.site == reference).to_numpy())[0]
    t0 = time.perf_counter()
    harmonized, _ = model.transform_scan(scans.images[k], scans.masks[k], row["site"], row)
    seconds = time.perf_counter() - t0
    linear = linear_to_reference(scans.images[k], scans.masks[k],
                                 normalize_intensity(scans.images[k], scans.masks[k])[1], model.reference_scale_)
    target, mask = scans.images[ref][..., slab], scans.masks[ref][..., slab] & scans.masks[k][..., slab]
    out = []
    for method, image in (("raw", scans.images[k]), ("linear", linear), ("deepscm", harmonized)):
        out.append({"participant_id": row["participant_id"], "site": row["site"], "method": method,
                    "psnr": psnr_in_mask(target, image[..., slab], mask),
                    # 2D SSIM per modelled slice (a thin slab is too thin for a 3D window)
                    "ssim": float(np.mean([ssim_in_mask(target[..., j], image[..., z], mask[..., j])
                                           for j, z in enumerate(slab)]))})
    return out, seconds


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    import torch

    torch.set_num_threads(args.threads)
    from bidsharmony.datasets.template_space import make_template_scans
    from bidsharmony.images.deepscm_image import DeepSCMImage, plot_counterfactuals

    data = make_template_scans(n_subjects=args.n_subjects, n_sites=3, n_traveling=args.n_traveling,
                               resolution=RESOLUTION, seed=args.seed)
    scans = data.scans
    cov = scans.covariates
    cov["brain_volume"] = data.truth["brain_volume_mm3"].to_numpy()
    cov["ventricle_volume"] = data.truth["ventricle_volume_mm3"].to_numpy()
    reference = sorted(cov.site.unique())[0]
    traveling = cov.traveling.to_numpy(bool)
    train = scans.subset(~traveling | (cov.site == reference).to_numpy())
    slab_range, ventricles = ventricle_slab(args.n_slices)
    model = DeepSCMImage(slice_size=args.slice_size, slab=slab_range, latent_dim=args.latent_dim,
                         channels=args.channels, epochs=args.epochs, kl_weight=args.kl_weight,
                         kl_warmup=args.kl_warmup, min_log_scale=args.min_log_scale,
                         decoder_conditioning=args.conditioning, parent_weight=args.parent_weight,
                         reference_site=reference, random_seed=args.seed, num_threads=args.threads)
    started = time.perf_counter()
    model.fit(train)
    fit_seconds = time.perf_counter() - started
    slab = model.geometry_.slice_indices

    exact, decoder, rows, inference = [], [], [], []
    for k in range(len(cov)):
        row = cov.iloc[k].to_dict()
        observed = model.counterfactual(scans.images[k], scans.masks[k], row, {})
        inside = observed["slice_mask"]
        exact.append(np.abs(observed["counterfactual"] - observed["original"])[inside].mean())
        decoder.append(np.abs(observed["reconstruction"] - observed["original"])[inside].mean())
        if traveling[k] and row["site"] != reference:
            new_rows, seconds = traveler_rows(model, scans, reference, k, slab)
            rows += new_rows
            inference.append(seconds)
            if args.figure and len(inference) == 1:
                plot_counterfactuals({
                    f"do(site={reference})": model.counterfactual(scans.images[k], scans.masks[k], row,
                                                                  {"site": reference}),
                    f"do(age+{args.years:g})": model.counterfactual(scans.images[k], scans.masks[k], row,
                                                                    {"age": f"+{args.years}"}),
                    "do(ventricles x1.5)": model.counterfactual(scans.images[k], scans.masks[k], row,
                                                                {"ventricle_volume": 1.5 * row["ventricle_volume"]})},
                    args.figure)
    ages = age_effect(model, scans, data, ventricles, args)

    table = pd.DataFrame(rows).groupby("method")[["psnr", "ssim"]].mean().reindex(["raw", "linear", "deepscm"])
    age = {key: float(value) for key, value in ages.mean().items()}
    age.update({"n_scans": len(ages),
                "fraction_dark_increased_model": float((ages.model_dark_change > 0).mean()),
                "fraction_dark_increased_true": float((ages.true_dark_change > 0).mean()),
                "fraction_darker_model": float((ages.model_mean_change < 0).mean()),
                "fraction_darker_true": float((ages.true_mean_change < 0).mean()),
                "corr_dark_change": float(np.corrcoef(ages.model_dark_change, ages.true_dark_change)[0, 1]),
                "corr_mean_change": float(np.corrcoef(ages.model_mean_change, ages.true_mean_change)[0, 1])})
    summary = {"data": "make_template_scans", "n_scans": len(cov), "n_train": len(train), "slab": slab,
               "settings": vars(args), "fit_seconds": fit_seconds,
               "inference_seconds_per_scan": float(np.mean(inference)) if inference else None,
               "mae_counterfactual_observed": float(np.mean(exact)), "mae_decoder_mean": float(np.mean(decoder)),
               "traveling": table.reset_index().to_dict(orient="records"), "age": age}
    with open(args.out, "w") as handle:
        json.dump(summary, handle, indent=2)
    report(summary, table, args)


def report(summary, table, args):
    print(f"data: make_template_scans, {summary['n_scans']} scans ({summary['n_train']} for training), slices "
          f"{summary['slab']} at {args.slice_size}x{args.slice_size}, {args.epochs} epochs; fit "
          f"{summary['fit_seconds']:.0f} s, transform {summary['inference_seconds_per_scan']:.2f} s/scan\n")
    print("| reconstruction | MAE (normalised units) |\n|---|---|")
    print(f"| counterfactual under observed values (exact u) | {summary['mae_counterfactual_observed']:.2e} |")
    print(f"| decoder mean (z from encoder, no u) | {summary['mae_decoder_mean']:.4f} |\n")
    print("| traveling subjects vs reference-site scan | PSNR (dB) | SSIM |\n|---|---|---|")
    for method, values in table.iterrows():
        print(f"| {method} | {values.psnr:.2f} | {values.ssim:.3f} |")
    a = summary["age"]
    print(f"\n| do(age+{args.years:g}), {a['n_scans']} single-site scans, ventricle region | model | truth |\n|---|---|---|")
    print(f"| dark-pixel change (mean) | {a['model_dark_change']:+.2f} | {a['true_dark_change']:+.2f} |")
    print(f"| scans with more dark pixels | {100 * a['fraction_dark_increased_model']:.0f} % | "
          f"{100 * a['fraction_dark_increased_true']:.0f} % |")
    print(f"| mean-intensity change | {a['model_mean_change']:+.4f} | {a['true_mean_change']:+.4f} |")
    print(f"| scans darker | {100 * a['fraction_darker_model']:.0f} % | {100 * a['fraction_darker_true']:.0f} % |")
    print(f"\ncorrelation model vs truth across scans: dark change {a['corr_dark_change']:.2f}, mean change "
          f"{a['corr_mean_change']:.2f}; ventricle node change {a['ventricle_node_change_mm3']:+.0f} mm3")


if __name__ == "__main__":
    main()
