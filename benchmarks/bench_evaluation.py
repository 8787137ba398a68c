#!/usr/bin/env python
"""Benchmark: the full leakage-safe comparison of harmonizers on a synthetic traveling-subject table.

Simulates ``3 x n_per_site`` single-site participants plus ``traveling`` participants scanned
at every site (:func:`bidsharmony.datasets.tabular.make_feature_table`, known truth), then runs
:func:`bidsharmony.evaluation.evaluate_harmonizers` for the raw data and each harmonizer of
:func:`bidsharmony.harmonize.get_harmonizer`, and prints a Markdown table (with machine, date
and command) ready for BENCHMARKS.md. Optionally writes the tables and the HTML report.

Example::

    OMP_NUM_THREADS=1 python benchmarks/bench_evaluation.py --out /tmp/bench-eval --report
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
import warnings
from datetime import datetime, timezone


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n-per-site", type=int, default=100, help="single-site participants per site")
    parser.add_argument("--traveling", type=int, default=60, help="participants scanned at every site")
    parser.add_argument("--n-sites", type=int, default=3)
    parser.add_argument("--n-features", type=int, default=20)
    parser.add_argument("--nonlinear-effect", type=float, default=0.5,
                        help="non-linear part of the site effects (0 = ComBat-shaped)")
    parser.add_argument("--harmonizers", default="combat,combat-gam,flow-scm",
                        help="comma-separated names for bidsharmony.harmonize.get_harmonizer")
    parser.add_argument("--flow-epochs", type=int, default=100, help="epochs of flow-scm")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--predictor", default="mlp", choices=("mlp", "linear"))
    parser.add_argument("--mlp-epochs", type=int, default=100)
    parser.add_argument("--mask-target", action="store_true",
                        help="hide test-row age/diagnosis from the harmonizer's transform")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default=None, help="folder for the TSV/JSON tables (and the report)")
    parser.add_argument("--report", action="store_true", help="also write group_report.html into --out")
    return parser.parse_args(argv)


def make_data(args):
    from bidsharmony.datasets.tabular import make_feature_table

    table = make_feature_table(n_per_site=args.n_per_site, n_sites=args.n_sites, n_features=args.n_features,
                               seed=args.seed, traveling_subjects=args.traveling,
                               nonlinear_effect=args.nonlinear_effect)
    covariates = table.covariates.copy()
    covariates["participant_id"] = table.hidden["subject_id"]
    covariates["diagnosis"] = table.hidden["diagnosis"].map({0: "CN", 1: "AD"})
    return table, covariates


def factories(names, reference_site, args):
    from bidsharmony.harmonize import get_harmonizer

    params = {"flow-scm": {"epochs": args.flow_epochs, "num_threads": args.threads}}
    out = {}
    for name in names:
        def make(name=name):
            return get_harmonizer(name, reference_site=reference_site, **params.get(name, {}))
        out[name] = make
    return out


def markdown(frame, digits=3) -> str:
    import numpy as np

    def cell(value):
        if isinstance(value, (float, np.floating)):
            return "–" if not np.isfinite(value) else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * frame.shape[1]]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(args.threads)
    from bidsharmony.evaluation import evaluate_harmonizers

    started = time.perf_counter()
    table, covariates = make_data(args)
    names = [n.strip() for n in args.harmonizers.split(",") if n.strip() and n.strip() != "none"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # covariate-range warnings of every fold; the report lists the design issues
        results = evaluate_harmonizers(
            table.features, covariates, factories(names, table.reference_site, args),
            truth=table.truth_reference, n_splits=args.folds, seed=args.seed, predictor=args.predictor,
            mlp_epochs=args.mlp_epochs, n_threads=args.threads, reference_site=table.reference_site,
            mask_target_in_transform=args.mask_target, on_error="warn")
    seconds = time.perf_counter() - started

    columns = ["method", "site_balanced_accuracy", "mmd2_vs_reference", "cross_site_age_mae",
               "cross_site_diagnosis_accuracy", "age_effect_r_vs_truth", "nrmse_to_truth",
               "nrmse_centered_to_truth", "icc_2_1_median", "log_likelihood_test", "fit_seconds"]
    summary = results.summary[[c for c in columns if c in results.summary.columns]]
    n_participants = covariates["participant_id"].nunique()
    command = "OMP_NUM_THREADS=1 python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    print(f"## Evaluation benchmark ({datetime.now(timezone.utc).date().isoformat()})\n")
    print(f"- command: `{command}`")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"torch {torch.__version__} ({args.threads} thread)")
    print(f"- data: make_feature_table, {len(table.features)} scans of {n_participants} participants "
          f"({args.traveling} traveling x {args.n_sites} sites), {args.n_features} ROI volumes, "
          f"reference {table.reference_site}; truth = reference-site truth")
    print(f"- protocol: {args.folds} participant-grouped folds, harmonizers fitted on training folds only; "
          f"site classifier logistic; cross-site predictor {args.predictor} ({args.mlp_epochs} epochs); "
          f"flow-scm {args.flow_epochs} epochs")
    print(f"- wall time: {seconds:.0f} s\n")
    print(markdown(summary))
    for warning in results.warnings:
        print(f"\n> {warning['message']}")
    if results.failed:
        print("\nFailed:", results.failed)
    if args.out:
        paths = results.write_tables(args.out)
        print(f"\ntables: {paths['summary'].parent}")
        if args.report:
            from bidsharmony.reports.group import write_group_report

            print("report:", write_group_report(results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
