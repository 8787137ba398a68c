"""Benchmark the harmonizers on synthetic ROI tables with known truth; prints markdown.

A small version of the protocol of Wang et al. (2021, Tables 1-2) on
:func:`bidsharmony.datasets.tabular.make_feature_table` data (non-linear site effects, sites
with different age ranges, a hidden diagnosis, traveling subjects):

* every harmonizer is fitted on 80 % of the regular scans (all sites) and applied to the rest
  and to the traveling subjects (never seen in fit);
* **error** — mean absolute % error of held-out scans at the non-reference sites against the
  reference-site truth (0 = perfect); **trav.** — the same for traveling subjects;
* **site BA** — balanced accuracy of predicting the site from age/sex-residualised log features
  (5-fold CV over all scans; chance = 1 / n_sites; the "truth" row is the floor);
* **dx Δd (abs)** — mean absolute deviation of the hidden diagnosis' effect size (Cohen's d) from
  the truth's;
* **age MAE / dx acc** — the papers' source -> target protocol: a Table 5 MLP (72-36) trained on
  the reference site's training scans (identical for all methods: reference scans are left
  unchanged) predicts age / classifies the diagnosis on the harmonized held-out scans of the
  other sites; the "truth" row is the oracle (TarOnly-like) bound, "none" is SrcOnly;
* **fit s / rows/s** — wall time of ``fit`` and ``transform`` throughput (one torch thread
  unless ``--threads``); at scale, throughput is measured on scans of the non-reference sites
  (reference-site scans are returned unchanged at no cost).

A second table (``--scale-rows``) times fit and transform at 10,000 scans x 145 features
(transforms also with ``--transform-threads`` torch threads); ``--adapt`` adds a table on
flow-SCM new-site adaptation (the last site held out of the fit, then adapted to).

Run ``python benchmarks/bench_harmonizers.py --help`` for the options; the defaults take about
8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import shlex
import sys
import time
import warnings
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from bidsharmony.datasets.tabular import (
    error_to_reference,
    make_feature_table,
    residualize,
    site_prediction_accuracy,
)
from bidsharmony.harmonize import get_harmonizer

FLOWS = ("affine", "linear-spline", "quadratic-spline")


def method_specs(args) -> list:
    """(label, harmonizer name, parameters) of every benchmarked method."""
    flow_common = dict(epochs=args.epochs, num_threads=args.threads, random_seed=args.seed)
    specs = [("none", None, {}),
             ("ComBat", "combat", dict(log_features=True)),
             ("ComBat-GAM", "combat-gam", dict(log_features=True)),
             ("CovBat", "covbat", dict(log_features=True))]
    for flow in FLOWS:
        specs.append((f"flow-SCM {flow}", "flow-scm", dict(flow=flow, **flow_common)))
    if args.paper_variants:
        specs.append(("flow-SCM quadratic-spline, joint context (paper)", "flow-scm",
                      dict(flow="quadratic-spline", site_interactions=True, spline_conditioning="all",
                           **flow_common)))
        specs.append(("flow-SCM quadratic-spline, masked autoregressive (paper)", "flow-scm",
                      dict(flow="quadratic-spline", architecture="autoregressive", site_interactions=True,
                           **flow_common)))
    wanted = [m.strip().lower() for m in args.methods.split(",")] if args.methods else None
    if wanted:
        specs = [s for s in specs if s[0] == "none" or any(w in s[0].lower() for w in wanted)]
    return specs


def mlp(kind: str, seed: int):
    """The evaluation MLP of Wang et al. (2021, Table 5): 72 -> 36 hidden units.

    scikit-learn's MLP has no LeakyReLU(0.1); ReLU is used (noted in BENCHMARKS.md).
    """
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = (MLPRegressor if kind == "regression" else MLPClassifier)(
        hidden_layer_sizes=(72, 36), alpha=1e-3, max_iter=2000, early_stopping=True, random_state=seed)
    return make_pipeline(StandardScaler(), model)


def cohens_d(frame: pd.DataFrame, covariates: pd.DataFrame, diagnosis: np.ndarray) -> np.ndarray:
    residuals = residualize(frame, covariates)
    sick = diagnosis == 1
    return (residuals[sick].mean(0) - residuals[~sick].mean(0)) / residuals.std(0)


def evaluate(table, args) -> pd.DataFrame:
    """The main table: accuracy of every method against the truth."""
    rng = np.random.default_rng(args.seed)
    traveling = table.hidden["traveling"].to_numpy()
    test = traveling | (rng.random(len(traveling)) < 0.2)
    train = ~test
    features, covariates = table.features, table.covariates
    reference = table.reference_site
    other = (covariates.site != reference).to_numpy()
    diagnosis = table.hidden["diagnosis"].to_numpy()
    held_out = test & ~traveling & other
    truth_d = cohens_d(table.truth_reference, covariates, diagnosis)

    # source model (reference site, training rows): the same raw scans for every method
    source = train & ~other
    log_source = np.log(features[source].to_numpy())
    age_model = mlp("regression", args.seed).fit(log_source, covariates.age[source])
    dx_model = mlp("classification", args.seed).fit(log_source, diagnosis[source])

    rows = []
    specs = method_specs(args) + [("truth (reference site)", "truth", {})]
    for label, name, params in specs:
        logging.info("benchmark: %s", label)
        fit_seconds, rate = float("nan"), float("nan")
        if name is None:
            harmonized = features.copy()
        elif name == "truth":
            harmonized = table.truth_reference.copy()
        else:
            model = get_harmonizer(name, reference_site=reference, **params)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                started = time.perf_counter()
                model.fit(features[train], covariates[train])
                fit_seconds = time.perf_counter() - started
                started = time.perf_counter()
                harmonized = model.transform(features, covariates)
                rate = len(features) / (time.perf_counter() - started)
        log_test = np.log(harmonized[held_out].to_numpy())
        rows.append({
            "method": label,
            "error %": error_to_reference(harmonized[held_out], table.truth_reference),
            "trav. error %": error_to_reference(harmonized[traveling & other], table.truth_reference),
            "site BA": site_prediction_accuracy(harmonized, covariates, seed=args.seed),
            "dx Δd (abs)": float(np.abs(cohens_d(harmonized, covariates, diagnosis) - truth_d).mean()),
            "age MAE (y)": float(np.abs(age_model.predict(log_test) - covariates.age[held_out]).mean()),
            "dx acc %": 100 * float((dx_model.predict(log_test) == diagnosis[held_out]).mean()),
            "fit s": fit_seconds,
            "transform rows/s": rate,
        })
    return pd.DataFrame(rows)


def epoch_seconds(model, fit_seconds: float, epochs: int, target: int = 100) -> tuple[float, float]:
    """Seconds per epoch and the fit time at ``target`` epochs, from a fit of ``epochs``.

    A fit also does work once (splitting, initialisation, the final likelihoods): scaling
    the whole fit time by ``target / epochs`` would multiply that too. Here only the training
    loops' time (both stages, from the model's history) is scaled.
    """
    loops = model.training_["epochs"][-1]["seconds"] + model.training_["covariates"]["seconds"]
    per_epoch = loops / epochs
    return per_epoch, fit_seconds - loops + per_epoch * target


def scale(args) -> pd.DataFrame:
    """Fit time and transform throughput at a realistic size (default 10,000 x 145)."""
    n_per_site = args.scale_rows // args.n_sites
    table = make_feature_table(n_per_site, n_sites=args.n_sites, n_features=args.scale_features, seed=args.seed)
    features, covariates = table.features, table.covariates
    # Once per process, the first flow-SCM fit imports torch's optimizer machinery and compiles
    # the numba kernels (cached on disk afterwards); a small warm-up fit takes that cost so that
    # the per-epoch times below extrapolate, and it is reported on its own.
    small = make_feature_table(60, n_sites=args.n_sites, n_features=4, seed=args.seed)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for flow in FLOWS:
            get_harmonizer("flow-scm", reference_site=small.reference_site, flow=flow, epochs=1,
                           random_seed=args.seed).fit_transform(small.features, small.covariates)
    logging.info("one-time start-up (imports, kernel compilation): %.1f s", time.perf_counter() - started)
    print(f"\nOne-time start-up of flow-SCM in this process (imports, kernel compilation or cache "
          f"loading; warm-up fits, not in the table): {time.perf_counter() - started:.1f} s")
    rows = []
    specs = [("ComBat", "combat", dict(log_features=True), None),
             ("CovBat", "covbat", dict(log_features=True), None)]
    if args.scale_gam:
        specs.append(("ComBat-GAM", "combat-gam", dict(log_features=True), None))
    wanted = [m.strip().lower() for m in args.scale_methods.split(",")] if args.scale_methods else None
    for flow in FLOWS:
        epochs = args.epochs if flow == args.scale_full_flow else args.scale_epochs
        specs.append((f"flow-SCM {flow}", "flow-scm", dict(flow=flow), epochs))
    specs.append(("flow-SCM quadratic-spline, masked autoregressive (paper)", "flow-scm",
                  dict(flow="quadratic-spline", architecture="autoregressive", site_interactions=True), 1))
    if wanted:
        specs = [s for s in specs if any(w in s[0].lower() for w in wanted)]
    for label, name, params, epochs in specs:
        logging.info("benchmark (scale): %s", label)
        extra = {} if epochs is None else dict(epochs=epochs, num_threads=args.threads, random_seed=args.seed)
        model = get_harmonizer(name, reference_site=table.reference_site, **params, **extra)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            started, cpu_started = time.perf_counter(), time.process_time()
            model.fit(features, covariates)
            fit_seconds = time.perf_counter() - started
            fit_cpu_seconds = time.process_time() - cpu_started  # robust to other jobs on the machine
            # time rows that need a counterfactual (reference-site rows are returned as they are)
            moving = np.flatnonzero((covariates.site != table.reference_site).to_numpy())
            sequential = name == "flow-scm" and params.get("architecture") == "autoregressive"
            if sequential:
                moving = moving[:args.scale_ar_rows]
            rates = {}
            for threads in sorted({1, args.transform_threads}):
                if hasattr(model, "num_threads"):
                    model.num_threads = threads
                elif threads > 1:
                    continue  # NumPy-only methods: one thread
                best = float("inf")
                for _ in range(args.transform_repeats):  # best of a few: the machine is shared
                    started = time.perf_counter()
                    model.transform(features.iloc[moving], covariates.iloc[moving])
                    best = min(best, time.perf_counter() - started)
                rates[threads] = len(moving) / best
            rate = rates[1]
            n_apply = len(moving)
        per_epoch, at_100 = fit_seconds, fit_seconds
        if epochs:
            per_epoch, at_100 = epoch_seconds(model, fit_seconds, epochs)
        row = {"method": label, "epochs": epochs if epochs else "-", "fit s": fit_seconds,
               "fit CPU s": fit_cpu_seconds, "fit s / epoch": per_epoch if epochs else float("nan"),
               "fit s at 100 epochs": at_100, "transform rows/s": rate}
        if args.transform_threads > 1:
            row[f"transform rows/s, {args.transform_threads} threads"] = rates.get(args.transform_threads, float("nan"))
        row["rows timed"] = n_apply
        rows.append(row)
        del model
    return pd.DataFrame(rows)


def adaptation(table, args) -> pd.DataFrame:
    """flow-SCM fitted with every site vs fitted without the last one and adapted to it."""
    rng = np.random.default_rng(args.seed)
    traveling = table.hidden["traveling"].to_numpy()
    test = traveling | (rng.random(len(traveling)) < 0.2)
    train = ~test
    features, covariates = table.features, table.covariates
    held_out = table.sites[-1]
    at_site = (covariates.site == held_out).to_numpy()
    params = dict(flow="quadratic-spline", epochs=args.epochs, num_threads=args.threads,
                  random_seed=args.seed, reference_site=table.reference_site)
    evaluated = {"held-out scans": test & ~traveling & at_site, "traveling subjects": traveling & at_site}

    def errors(frame_of):
        return {f"error % ({name})": error_to_reference(frame_of(rows), table.truth_reference)
                for name, rows in evaluated.items()}

    rows = [{"model": f"none (raw {held_out})", **errors(lambda r: features[r]), "fit s": float("nan"),
             "adapt s": float("nan")}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        full = get_harmonizer("flow-scm", **params).fit(features[train], covariates[train])
        full_seconds = time.perf_counter() - started
        rows.append({"model": f"fitted with {held_out}",
                     **errors(lambda r: full.transform(features[r], covariates[r])),
                     "fit s": full_seconds, "adapt s": float("nan")})
        started = time.perf_counter()
        partial = get_harmonizer("flow-scm", **params).fit(features[train & ~at_site], covariates[train & ~at_site])
        partial_seconds = time.perf_counter() - started
        started = time.perf_counter()
        partial.adapt_new_sites(features[train], covariates[train])
        adapt_seconds = time.perf_counter() - started
        rows.append({"model": f"fitted without {held_out}, adapted to it",
                     **errors(lambda r: partial.transform(features[r], covariates[r])),
                     "fit s": partial_seconds, "adapt s": adapt_seconds})
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame, digits: int = 2) -> str:
    def cell(value):
        if isinstance(value, float):
            if np.isnan(value):
                return "-"
            if abs(value) >= 1000:
                return f"{value:,.0f}"
            return f"{value:.{digits}f}"
        return str(value)

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(frame.columns))) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n-per-site", type=int, default=1000, help="scans per site (main table)")
    parser.add_argument("--n-sites", type=int, default=4)
    parser.add_argument("--n-features", type=int, default=20)
    parser.add_argument("--traveling", type=int, default=30, help="traveling subjects")
    parser.add_argument("--epochs", type=int, default=100, help="flow-SCM training epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--methods", default="", help="comma-separated substrings to keep (default all)")
    parser.add_argument("--paper-variants", action="store_true",
                        help="also run the paper's joint-context and masked autoregressive flows")
    parser.add_argument("--scale-rows", type=int, default=10000, help="0 skips the scale table")
    parser.add_argument("--scale-features", type=int, default=145)
    parser.add_argument("--scale-epochs", type=int, default=2,
                        help="epochs run at scale by the other flows (fit time at 100 epochs extrapolated)")
    parser.add_argument("--scale-full-flow", default="quadratic-spline", choices=(*FLOWS, "none"),
                        help="flow trained for the full --epochs at scale (measured, not extrapolated)")
    parser.add_argument("--scale-ar-rows", type=int, default=500,
                        help="rows transformed by the masked autoregressive flow at scale")
    parser.add_argument("--scale-gam", action="store_true", help="also fit ComBat-GAM at scale (~4 min)")
    parser.add_argument("--scale-methods", default="",
                        help="comma-separated substrings of the scale table's methods to run (default all)")
    parser.add_argument("--transform-threads", type=int, default=2,
                        help="also time transforms with this many torch threads at scale (1: only one)")
    parser.add_argument("--transform-repeats", type=int, default=3,
                        help="transforms timed at scale; the best is reported (shared machines are noisy)")
    parser.add_argument("--adapt", action="store_true",
                        help="also benchmark flow-SCM new-site adaptation (last site held out of the fit)")
    parser.add_argument("--main-table", action=argparse.BooleanOptionalAction, default=True,
                        help="run the accuracy table (--no-main-table: only the scale/adaptation tables)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    table = make_feature_table(args.n_per_site, n_sites=args.n_sites, n_features=args.n_features,
                               seed=args.seed, traveling_subjects=args.traveling)
    print(f"### Harmonizers on synthetic ROI tables ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n")
    print(f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"torch {torch.__version__} ({args.threads} thread(s))")
    print(f"- command: `python benchmarks/{os.path.basename(__file__)} {shlex.join(argv if argv is not None else sys.argv[1:])}`")
    print(f"- load average before the run: {' / '.join(f'{v:.1f}' for v in os.getloadavg())} (1/5/15 min; "
          "other jobs share this machine)")
    if args.main_table or args.adapt:
        print(f"- data: {args.n_sites} sites x {args.n_per_site} scans + {args.traveling} traveling subjects, "
              f"{args.n_features} ROI volumes, non-linear site effects (seed {args.seed}); fit on 80 % of the "
              f"regular scans; chance site BA = {1 / args.n_sites:.2f}; flows: {args.epochs} epochs, paper's "
              "optimiser settings\n")
    if args.main_table:
        print(markdown(evaluate(table, args)))
    if args.adapt:
        print("\nNew-site adaptation (flow-SCM quadratic spline; the last site held out of the fit, then "
              "only its conditioning learned with every fitted weight frozen; error % on its held-out "
              "scans and traveling subjects):\n")
        print(markdown(adaptation(table, args)))
    if args.scale_rows:
        print(f"\nScale: {args.scale_rows:,} scans x {args.scale_features} features, {args.n_sites} sites "
              f"({args.scale_full_flow} flow trained {args.epochs} epochs; the other flows "
              f"{args.scale_epochs} epoch(s), their 100-epoch time extrapolated):\n")
        print(markdown(scale(args)))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"\nPeak memory (whole run): {peak_gb:.2f} GB; total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
