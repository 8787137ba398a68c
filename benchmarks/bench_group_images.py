"""Image harmonizers through the group-level command on the participant level's own outputs.

Run ``make demo`` first (or any participant-level output of the synthetic dataset, whose
traveling subjects ``sub-T*`` were scanned at every site), then::

    python benchmarks/bench_group_images.py demo/data/bids demo/derivatives \
        --harmonizer blindharmony --harmonizer-param slice_size=64 epochs=20

Each harmonizer runs as ``bidsharmony ... group`` into a scratch copy of the template-space
images (the demo's outputs are not touched); the table gives, per traveling subject and
non-reference site, the PSNR/SSIM inside the brain against the same subject's reference-site
scan, raw and harmonized, and the wall time of the command.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np

SPACE = "MNI152NLin2009aSym"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bids_dir", type=Path)
    parser.add_argument("derivatives", type=Path)
    parser.add_argument("--harmonizer", nargs="+", required=True)
    parser.add_argument("--harmonizer-param", nargs="*", default=[])
    parser.add_argument("--reference-site", default="siteA")
    parser.add_argument("--omp-nthreads", type=int, default=2)
    return parser.parse_args(argv)


def copy_template_images(derivatives: Path, scratch: Path) -> None:
    for image in derivatives.glob(f"sub-*/**/anat/*_space-{SPACE}_*desc-preproc_T1w.nii.gz"):
        for path in (image, image.with_name(image.name.replace("desc-preproc_T1w", "desc-brain_mask"))):
            target = scratch / path.relative_to(derivatives)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def traveler_scores(out: Path, desc: str, reference: str) -> list[dict]:
    from bidsharmony.evaluation.images import psnr_in_mask, ssim_in_mask

    def load(folder, kind):
        return nb.load(next(folder.glob(f"*_space-{SPACE}_*desc-{kind}.nii.gz"))).get_fdata()

    rows = []
    for subject in sorted(out.glob("sub-T*")):
        ref_dir = subject / f"ses-{reference}" / "anat"
        target, target_mask = load(ref_dir, "preproc_T1w"), load(ref_dir, "brain_mask") > 0
        for session in sorted(subject.glob("ses-*")):
            if session.name == f"ses-{reference}":
                continue
            anat = session / "anat"
            mask = target_mask & (load(anat, "brain_mask") > 0)
            raw, harmonized = load(anat, "preproc_T1w"), load(anat, f"{desc}_T1w")
            rows.append({
                "scan": f"{subject.name} {session.name}",
                "raw_psnr": psnr_in_mask(raw, target, mask), "psnr": psnr_in_mask(harmonized, target, mask),
                "raw_ssim": ssim_in_mask(raw, target, mask), "ssim": ssim_in_mask(harmonized, target, mask),
            })
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    from bidsharmony.harmonize.image_base import image_harmonizer_class

    bidsharmony = Path(sys.executable).with_name("bidsharmony")
    for method in args.harmonizer:
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch) / "derivatives"
            copy_template_images(args.derivatives, scratch)
            command = [str(bidsharmony), str(args.bids_dir), str(scratch), "group", "--site-column", "site",
                       "--reference-site", args.reference_site, "--harmonizer", method,
                       "--omp-nthreads", str(args.omp_nthreads)]
            if args.harmonizer_param:
                command += ["--harmonizer-param", *args.harmonizer_param]
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - started
            rows = traveler_scores(scratch, image_harmonizer_class(method).desc, args.reference_site)
        print(f"\n{method} ({' '.join(args.harmonizer_param) or 'defaults'}): group level {seconds:.0f} s")
        print("| scan | PSNR raw → harmonized (dB) | SSIM raw → harmonized |\n|---|---|---|")
        for r in rows:
            print(f"| {r['scan']} | {r['raw_psnr']:.2f} → {r['psnr']:.2f} | {r['raw_ssim']:.3f} → {r['ssim']:.3f} |")
        print(f"| mean | {np.mean([r['raw_psnr'] for r in rows]):.2f} → {np.mean([r['psnr'] for r in rows]):.2f} "
              f"| {np.mean([r['raw_ssim'] for r in rows]):.3f} → {np.mean([r['ssim'] for r in rows]):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
