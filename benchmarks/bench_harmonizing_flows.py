"""Benchmark Harmonizing Flows (Beizaee et al. 2023) on traveling subjects; prints markdown.

Data: :mod:`bidsharmony.datasets.synthetic` at 4 mm (3 sites, scanner-space grids of one
geometry — the template-space ``make_template_scans`` is pending). Harmonizing Flows is fitted
on the reference site's scans of single-site subjects only (source-free); each traveling
subject's scans at the other sites are harmonized (one adaptation per site, on that site's
traveler scans) and compared inside the brain with the same subject's reference-site scan:

* PSNR / SSIM (:mod:`bidsharmony.evaluation.images`; peak = data range of the reference scan
  inside the brain);
* segmentation agreement: a 3-class Gaussian mixture fitted on the reference-site training
  intensities (a segmenter trained on the source domain only, as in the paper's protocol),
  applied to each output; Dice of CSF / GM / WM against the ground-truth tissues.

Methods: **raw** (the scan min-max normalised inside the brain, mapped to the reference
site's units), **histogram matching** (:class:`bidsharmony.images.histogram.HistogramMatching`,
Nyúl & Udupa's landmark method fitted on the same reference scans), **Harmonizing Flows
pretrained** (the harmonizer before adaptation) and **Harmonizing Flows** (after the Eq. 6
adaptation).

Run ``python benchmarks/bench_harmonizing_flows.py --help``; ``--baselines-only`` skips the
Harmonizing Flows fit (raw, histogram matching and the reference-scan rows; under a minute).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np
import pandas as pd


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=8, help="single-site subjects per site")
    parser.add_argument("--n-traveling", type=int, default=4, help="traveling subjects")
    parser.add_argument("--slice-size", type=int, default=32)
    parser.add_argument("--flow-epochs", type=int, default=40)
    parser.add_argument("--harmonizer-epochs", type=int, default=60)
    parser.add_argument("--adaptation-iterations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baselines-only", action="store_true",
                        help="only the raw, histogram-matching and reference-scan rows (no Harmonizing Flows fit)")
    parser.add_argument("--output", default="bench_harmonizing_flows.json")
    return parser.parse_args(argv)


def make_data(args):
    """Reference-site training scans and traveling subjects (scans per site, mask, tissues)."""
    from bidsharmony.datasets import synthetic
    from bidsharmony.harmonize.image_base import ImageSet

    template = synthetic.TemplateModel(resolution=4)
    sites = synthetic.make_sites(3, 4.0, args.seed)
    grid = synthetic.Grid(4.0)
    rng = np.random.default_rng(args.seed)
    reference = sites[0]["name"]
    images, masks, rows, travelers = [], [], [], []
    for subject in synthetic.make_subjects(3 * args.n_train, sites, args.seed, args.n_traveling):
        anatomy = synthetic.make_anatomy(subject, template, grid)
        if len(subject.sites) > 1:
            scans = {s["name"]: synthetic.scan_image(anatomy, s, rng).astype(np.float32) for s in sites}
            travelers.append((subject.participant_id, scans, anatomy.mask, anatomy.tissues))
        elif subject.sites[0] == reference:
            images.append(synthetic.scan_image(anatomy, sites[0], rng).astype(np.float32))
            masks.append(anatomy.mask)
            rows.append({"participant_id": subject.participant_id, "session_id": "ses-1", "site": reference,
                         "age": subject.age, "sex": subject.sex})
    return ImageSet(images, masks, pd.DataFrame(rows), grid.affine), travelers, sites


def fit_segmenter(training, seed):
    """3-class GMM of reference-site brain intensities; returns label(image, mask) -> tissues."""
    from sklearn.mixture import GaussianMixture

    values = np.concatenate([i[m] for i, m in zip(training.images, training.masks)])[:, None]
    gmm = GaussianMixture(3, random_state=seed).fit(values)
    order = np.argsort(gmm.means_[:, 0])  # darkest = CSF (1), then GM (2), WM (3) on T1w
    labels = np.empty(3, np.uint8)
    labels[order] = [1, 2, 3]

    def segment(image, mask):
        out = np.zeros(image.shape, np.uint8)
        out[mask] = labels[gmm.predict(image[mask][:, None])]
        return out

    return segment


def fit_harmonizing_flows(args, training, reference):
    """Harmonizing Flows and a copy that skips adaptation (pretrained only), and the fit time."""
    from bidsharmony.images.harmonizing_flows import HarmonizingFlows

    model = HarmonizingFlows(reference_site=reference, slice_size=args.slice_size, flow_epochs=args.flow_epochs,
                             harmonizer_epochs=args.harmonizer_epochs,
                             adaptation_iterations=args.adaptation_iterations, random_seed=args.seed,
                             num_threads=args.threads)
    started = time.perf_counter()
    model.fit(training)
    fit_seconds = time.perf_counter() - started
    pretrained = HarmonizingFlows(**{**model.get_params(), "adaptation_iterations": 0})
    pretrained.__dict__.update({k: v for k, v in model.__dict__.items() if k.endswith("_")})
    pretrained._fitted, pretrained._adapted = True, {}
    return model, pretrained, fit_seconds


def adapt_per_site(model, pretrained, travelers, sites, affine):
    """One adaptation per target site on all of its traveler scans (the default "site" mode)."""
    import torch

    from bidsharmony.harmonize.image_base import ImageSet

    adaptation = {}
    for site in (s["name"] for s in sites[1:]):
        scans = ImageSet([t[1][site] for t in travelers], [t[2] for t in travelers],
                         pd.DataFrame({"site": [site] * len(travelers)}), affine)
        started = time.perf_counter()
        for harmonizer in (model, pretrained):
            slices = [harmonizer._slices(i, m) for i, m in zip(scans.images, scans.masks)]
            harmonizer._adapted[site] = harmonizer.adapt(torch.cat([s[2] for s in slices]),
                                                         torch.cat([s[3] for s in slices]))
            if harmonizer is model:
                adaptation[site] = {"seconds": time.perf_counter() - started, **model._adapted[site][1]}
    return adaptation


def run(args):
    import torch

    from bidsharmony.evaluation.images import dice_per_label, psnr_in_mask, ssim_in_mask
    from bidsharmony.images.histogram import HistogramMatching
    from bidsharmony.images.data import denormalize_intensity, normalize_intensity

    torch.set_num_threads(args.threads)
    training, travelers, sites = make_data(args)
    reference = sites[0]["name"]
    model = pretrained = None
    fit_seconds, adaptation = None, {}
    if not args.baselines_only:
        model, pretrained, fit_seconds = fit_harmonizing_flows(args, training, reference)
    histogram = HistogramMatching(reference_site=reference).fit(training)
    segment = fit_segmenter(training, args.seed)
    # the reference site's units: the median robust range of its scans (Harmonizing Flows' reference_scale_)
    reference_scale = np.median([normalize_intensity(i, m)[1] for i, m in zip(training.images, training.masks)],
                                axis=0)
    if model is not None:
        adaptation = adapt_per_site(model, pretrained, travelers, sites, training.affine)
    results = []
    for participant, scans, mask, tissues in travelers:
        target = scans[reference]
        for site in (s["name"] for s in sites[1:]):
            source = scans[site]
            outputs = {"raw": np.where(mask, denormalize_intensity(normalize_intensity(source, mask)[0],
                                                                   reference_scale), source),
                       "histogram matching": histogram.transform_scan(source, mask, site)[0]}
            seconds = None
            if model is not None:
                outputs["Harmonizing Flows pretrained"] = pretrained.transform_scan(source, mask, site)[0]
                started = time.perf_counter()
                outputs["Harmonizing Flows"] = model.transform_scan(source, mask, site)[0]
                seconds = time.perf_counter() - started
            for method, image in outputs.items():
                dice = dice_per_label(tissues[mask], segment(image, mask)[mask], [1, 2, 3])
                results.append({"site": site, "subject": participant, "method": method,
                                "psnr": psnr_in_mask(target, image, mask), "ssim": ssim_in_mask(target, image, mask),
                                "dice_csf": dice[1], "dice_gm": dice[2], "dice_wm": dice[3],
                                "seconds": seconds if method == "Harmonizing Flows" else None})
    # the reference-site scans themselves: how much does the segmenter lose with no site effect at all
    for participant, scans, mask, tissues in travelers:
        dice = dice_per_label(tissues[mask], segment(scans[reference], mask)[mask], [1, 2, 3])
        results.append({"site": reference, "subject": participant, "method": "reference scan (upper bound)",
                        "psnr": np.inf, "ssim": 1.0, "dice_csf": dice[1], "dice_gm": dice[2], "dice_wm": dice[3],
                        "seconds": None})
    info = {"fit_seconds": fit_seconds, "training_scans": len(training), "adaptation": adaptation,
            "site_maps": {s["name"]: s["intensity"] for s in sites}}
    if model is not None:
        info.update({"source_bits_per_dim": model.source_bits_per_dim_, "flow_history": model.flow_history_,
                     "harmonizer_history": model.harmonizer_history_})
    return pd.DataFrame(results), info


def markdown(results, info, args, total):
    results = results.assign(dice_mean=results[["dice_csf", "dice_gm", "dice_wm"]].mean(axis=1))
    table = results.groupby("method", sort=False)[["psnr", "ssim", "dice_csf", "dice_gm", "dice_wm",
                                                   "dice_mean"]].mean()
    lines = ["| method | PSNR (dB) | SSIM | Dice CSF | Dice GM | Dice WM | mean Dice |",
             "|---|---|---|---|---|---|---|"]
    for method, row in table.iterrows():
        psnr = "—" if not np.isfinite(row["psnr"]) else f"{row['psnr']:.2f}"
        lines.append(f"| {method} | {psnr} | {row['ssim']:.3f} | {row['dice_csf']:.3f} | {row['dice_gm']:.3f} | "
                     f"{row['dice_wm']:.3f} | {row['dice_mean']:.3f} |")
    compared = results["method"].isin(["raw", "histogram matching", "Harmonizing Flows"])
    per_site = results[compared].groupby(["site", "method"], sort=False)["psnr"].mean()
    lines += ["", "PSNR per site: " + "; ".join(f"{s} {m} {v:.2f}" for (s, m), v in per_site.items())]
    if info["fit_seconds"] is None:
        return "\n".join(lines + ["", f"Baselines only (no Harmonizing Flows fit); total {total:.0f} s."])
    adaptation = "; ".join(f"{site}: {a['seconds']:.1f} s, {a['adaptation_iterations']} iterations, bpd "
                           f"{a['bits_per_dim_before']:.3f} -> {a['bits_per_dim_after']:.3f} ({a['stopping_reason']})"
                           for site, a in info["adaptation"].items())
    per_scan = results["seconds"].dropna()
    lines += ["", f"Fit: {info['fit_seconds']:.0f} s on {info['training_scans']} reference scans "
              f"({args.flow_epochs} flow epochs, final {info['flow_history'][-1]:.3f} bits/dim; "
              f"{args.harmonizer_epochs} harmonizer epochs, final MSE {info['harmonizer_history'][-1]:.4f}); "
              f"source validation bpd {info['source_bits_per_dim']:.3f}.",
              f"Adaptation per site (all its traveler scans at once): {adaptation}.",
              f"Applying an adapted harmonizer: {per_scan.mean():.2f} s per volume; total {total:.0f} s."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    started = time.perf_counter()
    results, info = run(args)
    report = markdown(results, info, args, time.perf_counter() - started)
    with open(args.output, "w") as handle:
        json.dump({"args": vars(args), "info": info, "results": results.to_dict(orient="records")}, handle,
                  indent=1, default=str)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
