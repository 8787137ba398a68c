#!/usr/bin/env python
"""Benchmark: ``bidsharmony ... group --evaluate`` on the real FCON1000 table (issue 20, point 4).

What a user gets from the command line, not from the library calls of ``bench_real_roi.py``:
the FCON1000 aseg table (same sites and volumes, :func:`bench_real_roi.load_fcon1000`) is
written to a scratch folder as ``--features`` and ``--covariates`` TSVs, and the group level is
run on it with every table harmonizer, ``--evaluate`` and ``--evaluate-repeats``. The script
then reads ``group/evaluation/evaluation.json`` and prints the comparison (mean ± SD over all folds of all
repeats, as the report shows it) and the recommendation the report makes, with the rule's
inputs. Nothing is written next to the data.

Example (about 20-40 min on 2 shared cores)::

    NIPYPE_NO_ET=1 python benchmarks/bench_real_roi_cli.py --out /tmp/bench-roi-cli --seed 0 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real_roi import DEFAULT_DATA, load_fcon1000  # noqa: E402

METHODS = ("combat", "combat-gam", "combat-ls", "covbat", "flow-scm")
COLUMNS = ("site_balanced_accuracy", "site_balanced_accuracy_sd", "cross_site_age_mae",
           "cross_site_age_mae_sd", "age_effect_r_vs_raw", "mmd2_vs_reference", "fit_seconds")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the FCON1000 CSVs")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-real-roi-cli"))
    parser.add_argument("--seed", type=int, default=0, help="--random-seed of the run")
    parser.add_argument("--repeats", type=int, default=3, help="--evaluate-repeats")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="--harmonizer")
    parser.add_argument("--min-site-scans", type=int, default=20, help="sites with fewer scans are dropped")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--summarize-only", action="store_true", help="only read the results of an earlier run in --out")
    return parser.parse_args(argv)


def write_inputs(folder: Path, data: Path, min_site_scans: int) -> tuple[Path, Path, str]:
    """FCON1000 as the CLI's feature and covariate TSVs; returns their paths and the largest site."""
    features, covariates, _ = load_fcon1000(data, min_site_scans)
    folder.mkdir(parents=True, exist_ok=True)
    features_tsv = folder / "features.tsv"
    covariates_tsv = folder / "covariates.tsv"
    features.reset_index().to_csv(features_tsv, sep="\t", index=False)
    covariates[["participant_id", "site", "age", "sex"]].to_csv(covariates_tsv, sep="\t", index=False)
    largest = covariates["site"].value_counts().sort_index().sort_values(ascending=False, kind="stable").index[0]
    return features_tsv, covariates_tsv, str(largest)


def main(argv=None) -> int:
    args = parse_args(argv)
    features_tsv, covariates_tsv, reference = write_inputs(args.out / "inputs", args.data, args.min_site_scans)
    # --features needs no sub-<label> folders: a BIDS root holding only its description will do.
    bids = args.out / "bids"
    bids.mkdir(parents=True, exist_ok=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "FCON1000 aseg volumes (features only)", "BIDSVersion": "1.9.0"}))
    command = [sys.executable, "-m", "bidsharmony", str(bids), str(args.out / "derivatives"), "group",
               "--skip-bids-validation", "--features", str(features_tsv), "--covariates", str(covariates_tsv),
               "--harmonizer", *args.methods, "--reference-site", reference, "--evaluate",
               "--evaluate-repeats", str(args.repeats), "--random-seed", str(args.seed),
               "--nprocs", str(args.nprocs), "-w", str(args.out / "work")]
    print("$", " ".join(command), flush=True)
    if not args.summarize_only:
        started = time.perf_counter()
        code = subprocess.call(command)
        print(f"exit {code} after {time.perf_counter() - started:.0f} s")
        if code:
            return code
    evaluation = json.loads((args.out / "derivatives" / "group" / "evaluation" / "evaluation.json").read_text())
    summary = pd.DataFrame(evaluation["summary"])
    shown = ["method"] + [c for c in COLUMNS if c in summary.columns]
    print(summary[shown].to_markdown(index=False, floatfmt=".4f"))
    print("recommendation:", json.dumps(evaluation.get("recommendation"), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
