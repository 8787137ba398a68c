"""Where the raw/normalised pair's tissue volumes part: bias correction or segmentation?

``sub-prismaxa30`` of the real development dataset (``../shared/data/real/bids``; never copied
into the repository) is one Siemens Prisma MPRAGE at 2 mm reconstructed without (``rec-raw``)
and with (``rec-norm``) the scanner's prescan normalisation: the same brain under two bias
fields. The participant level's volumes of the two differ by CSF -49 %, GM +9.5 %, WM +37 %
(BENCHMARKS.md, "Real scans"). This benchmark takes the pair apart:

1. bias correction, three ways — the workflow's N4 on the whole head; N4 refitted inside
   deepbet's brain mask; and that refit once more, weighted by the grey + white matter
   posteriors of a k-means Atropos (antsAtroposN4's loop);
2. for each, how well the two corrected images agree (spread of their log intensity ratio in
   the brain), the white/grey contrast of each, and the pair's tissue volumes from a k-means
   Atropos (no template priors);
3. with ``--work`` (the work directory of a participant run on the pair, e.g. from
   ``bench_real_scans.py --participant``), the same volumes from the workflow's own
   segmentation setting — Atropos with the template priors warped to each scan (weight
   0.25) — on its own priors and on the normalised scan's priors for both; with
   ``--prior-weights``, also after the head N4 at each of those prior weights (0: the priors
   only start the EM).

    python benchmarks/bench_bias_pair.py --out /tmp/bench_bias_pair
    python benchmarks/bench_bias_pair.py --work /tmp/bench_real_participant/work
"""

from __future__ import annotations

import argparse
import glob
import platform
import time
from pathlib import Path

import nibabel as nb
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BIDS = REPO.parent / "shared" / "data" / "real" / "bids"
RECS = ("raw", "norm")
CLASSES = ("CSF", "GM", "WM")


def _correct(variant: str, valid: str, head_n4: str, mask: str, folder: Path) -> str:
    """The T1w corrected by one ``variant`` of N4 (each refit starts from the validated image)."""
    from bidsharmony.interfaces.ants import atropos_files, n4_files

    if variant == "head":
        return head_n4
    out, bias = str(folder / f"{variant}_n4.nii.gz"), str(folder / f"{variant}_bias.nii.gz")
    # the brain is too small for the head fit's 6 mm grid: shrink to <= 4 mm
    shrink = max(1, int(4.0 / min(nb.load(valid).header.get_zooms()[:3])))
    n4_files(valid, out, bias, mask_file=mask, shrink_factor=shrink)
    if variant == "brain+weighted":
        stem = folder / "kmeans_for_weights"
        probsegs = [f"{stem}_label-{c}_probseg.nii.gz" for c in CLASSES]
        atropos_files(out, mask, f"{stem}_dseg.nii.gz", probsegs)
        posteriors = nb.load(probsegs[1])
        weight = np.asarray(posteriors.dataobj, np.float32) + np.asarray(nb.load(probsegs[2]).dataobj, np.float32)
        weight_file = str(folder / "gmwm_weight.nii.gz")
        nb.Nifti1Image(weight, posteriors.affine, posteriors.header).to_filename(weight_file)
        n4_files(valid, out, bias, mask_file=mask, shrink_factor=shrink, weight_file=weight_file)
    return out


def _segment(image: str, mask: str, stem: Path, priors=None, prior_weight=0.25) -> tuple[np.ndarray, float]:
    """Tissue volumes (mL, CSF/GM/WM) and the WM/GM median intensity ratio of one image."""
    from bidsharmony.interfaces.ants import atropos_files

    probsegs = [f"{stem}_label-{c}_probseg.nii.gz" for c in CLASSES]
    atropos_files(image, mask, f"{stem}_dseg.nii.gz", probsegs, prior_probsegs=priors, prior_weight=prior_weight)
    dseg_img = nb.load(f"{stem}_dseg.nii.gz")
    dseg, data = np.asarray(dseg_img.dataobj), nb.load(image).get_fdata()
    voxel_ml = float(np.prod(dseg_img.header.get_zooms()[:3])) / 1000
    volumes = np.array([np.count_nonzero(dseg == k) for k in (1, 2, 3)]) * voxel_ml
    return volumes, float(np.median(data[dseg == 3]) / np.median(data[dseg == 2]))


def _log_ratio_spread(raw: str, norm: str, mask: np.ndarray) -> float:
    a, b = nb.load(raw).get_fdata()[mask], nb.load(norm).get_fdata()[mask]
    tissue = (a > 0) & (b > 0)
    return float(np.log(a[tissue] / b[tissue]).std())


def _native_priors(work: Path, rec: str) -> list[str]:
    found = [
        sorted(glob.glob(str(work / "bidsharmony_wf" / "sub_prismaxa30_wf" / f"anat_rec_{rec}_wf" / "priors_to_native"
                             / "mapflow" / f"_priors_to_native{i}" / "*.nii.gz")))
        for i in range(3)
    ]
    if not all(found):
        raise SystemExit(f"{work}: no priors_to_native outputs of rec-{rec}; run the participant level on the pair first")
    return [files[0] for files in found]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=Path, default=DEFAULT_BIDS)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_bias_pair"))
    parser.add_argument("--work", type=Path, help="work directory of a participant run on sub-prismaxa30")
    parser.add_argument("--prior-weights", type=float, nargs="*", default=[],
                        help="with --work: Atropos prior weights to try after the head N4")
    args = parser.parse_args(argv)

    from bidsharmony.interfaces.ants import N4BiasFieldCorrection
    from bidsharmony.interfaces.images import ValidateT1w
    from bidsharmony.interfaces.skullstrip import DeepBetBrainExtraction

    start = time.perf_counter()
    valid, head_n4, masks = {}, {}, {}
    for rec in RECS:
        folder = args.out / rec
        folder.mkdir(parents=True, exist_ok=True)
        image = args.bids / "sub-prismaxa30" / "anat" / f"sub-prismaxa30_rec-{rec}_T1w.nii.gz"
        valid[rec] = ValidateT1w(in_file=str(image)).run(cwd=str(folder)).outputs.out_file
        head_n4[rec] = N4BiasFieldCorrection(in_file=valid[rec]).run(cwd=str(folder)).outputs.out_file
        masks[rec] = DeepBetBrainExtraction(in_file=head_n4[rec]).run(cwd=str(folder)).outputs.out_mask
    # one mask for both, so that volumes differ only by the intensities
    mask_file = masks["norm"]
    mask = np.asarray(nb.load(mask_file).dataobj) > 0

    rows = []
    for variant in ("head", "brain", "brain+weighted"):
        corrected, volumes, contrast = {}, {}, {}
        for rec in RECS:
            folder = args.out / rec / variant
            folder.mkdir(parents=True, exist_ok=True)
            corrected[rec] = _correct(variant, valid[rec], head_n4[rec], mask_file, folder)
            volumes[rec], contrast[rec] = _segment(corrected[rec], mask_file, folder / "kmeans")
        row = {"variant": variant, "segmentation": "k-means", "spread": _log_ratio_spread(corrected["raw"], corrected["norm"], mask),
               "volumes": volumes, "contrast": contrast}
        rows.append(row)
        if args.work:
            priors = {rec: _native_priors(args.work, rec) for rec in RECS}
            same = {rec: priors["norm"] for rec in RECS}
            for label, name, chosen in (("priors (own)", "own_priors", priors), ("priors (norm's for both)", "norm_priors", same)):
                seg = {rec: _segment(corrected[rec], mask_file, args.out / rec / variant / name, priors=chosen[rec]) for rec in RECS}
                rows.append({"variant": variant, "segmentation": label, "spread": row["spread"],
                             "volumes": {rec: seg[rec][0] for rec in RECS}, "contrast": {rec: seg[rec][1] for rec in RECS}})
            for weight in args.prior_weights if variant == "head" else ():
                seg = {rec: _segment(corrected[rec], mask_file, args.out / rec / variant / f"priors_w{weight:g}",
                                     priors=priors[rec], prior_weight=weight) for rec in RECS}
                rows.append({"variant": variant, "segmentation": f"priors (own), weight {weight:g}", "spread": row["spread"],
                             "volumes": {rec: seg[rec][0] for rec in RECS}, "contrast": {rec: seg[rec][1] for rec in RECS}})
        print(f"{variant} done ({time.perf_counter() - start:.0f} s)", flush=True)

    print(f"\n{platform.node()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{time.perf_counter() - start:.0f} s; mask: deepbet on rec-norm, {mask.sum() * np.prod(nb.load(mask_file).header.get_zooms()[:3]) / 1000:.0f} mL\n")
    print("| N4 | segmentation | log-ratio spread | CSF / GM / WM mL raw | norm | raw vs norm % | WM/GM raw | norm |")
    print("|---|---|---:|---|---|---|---:|---:|")
    for row in rows:
        raw, norm = row["volumes"]["raw"], row["volumes"]["norm"]
        change = " / ".join(f"{v:+.1f}" for v in 100 * (raw / norm - 1))
        print(f"| {row['variant']} | {row['segmentation']} | {row['spread']:.3f} | {' / '.join(f'{v:.0f}' for v in raw)} | "
              f"{' / '.join(f'{v:.0f}' for v in norm)} | {change} | {row['contrast']['raw']:.3f} | {row['contrast']['norm']:.3f} |")


if __name__ == "__main__":
    main()
