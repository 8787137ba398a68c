#!/usr/bin/env python
"""Benchmark: every table harmonizer on a real multi-site ROI table (FCON1000 aseg, issue 20).

Data: the FreeSurfer aseg table of FCON1000 shipped in ``../shared/data/real/fcon1000`` (two CSV
files, pooled; read from there and never copied into the project). Kept: the sites with at
least ``--min-site-scans`` scans (16 sites, 974 scans at 20) and every volume column that is
positive and present in all of those scans (53 volumes; ``EstimatedTotalIntraCranialVol`` is a
copy of ``eTIV`` and is dropped; thickness, ratio and surface-hole columns are not volumes).

Every figure comes from the building blocks of :mod:`bidsharmony.evaluation` and is computed,
for each seed, on the same participant-grouped, site-stratified folds (``make_folds``, seed =
the run's seed) with the harmonizer **refitted on every training fold** and applied to that
fold's training rows and, separately, to its held-out rows (``harmonize_in_folds``):

(a) **site BA** — balanced accuracy of a multinomial logistic regression predicting the site
    from the log of the harmonized volumes (``site_predictability_from_folds``: age spline and
    sex effects removed per training fold first, the library default; pooled out-of-fold
    predictions; chance = 1 / n_sites). The same without the age/sex adjustment is in the JSON.
(b) **age MAE** — the Table-5 MLP of Wang et al. (``cross_site_from_folds``, 72-36 LeakyReLU,
    100 epochs) trained on the training rows of the largest site (also the harmonizers'
    reference site), scored on the held-out rows of every other site; mean over target sites
    (then folds) of the MAE in years. The held-out rows are harmonized **without their true
    age**: ``harmonize_in_folds(mask_columns=("age",))`` replaces it by the training-fold mean
    age of the row's site (``mask_covariate``) before ``transform``. The MAE with the true age
    given to ``transform`` (a leak) is reported beside it.
(c) **age effects kept** — within-site partial correlation of each log-volume with age
    (``effect_sizes(terms=("age", "sex"), adjust_for_site=True)``) on the cross-fitted
    (out-of-fold) harmonized table vs on the raw table: Pearson r across the features (target
    >= 0.99) and the magnitude ratio mean|r_after| / mean|r_raw| (target 0.95-1.05).
(d) **the paper's protocol** (Wang et al. 2021, Table 1): the same MLP trained on one source site
    (default: the site with the widest age range, like the paper's BLSA-3T), tested on each other
    site; SrcOnly = raw features, TarOnly = raw, trained and tested within the target site
    (``summarize_cross_site``); "gap closed" = (SrcOnly - method) / (SrcOnly - TarOnly) of the
    means over targets.
(e) **fit s** per fold and **transform rows/s** (training + held-out + masked held-out rows).

Every number is the mean +- sd over ``--seeds``. Harmonizers run with ``log_features=True``
(every table harmonizer of the project supports it) and their package defaults otherwise;
``equivariant-pooling`` is not benchmarked: it returns a learned representation, not volumes.

Example (about 30 min on 2 shared cores, one torch thread)::

    NIPYPE_NO_ET=1 python benchmarks/bench_real_roi.py --seeds 0 1 2 3 4 --out /tmp/bench-real-roi
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "fcon1000"
COVARIATE_COLUMNS = ("sub_id", "age", "sex", "site", "sitenum", "avg_en")
#: the ComBat family (the methods flow-SCM is compared against)
COMBAT_FAMILY = ("ComBat", "ComBat-GAM", "ComBat-LS", "CovBat")

#: key -> (label, registered name or None for raw, parameters besides reference site and seed)
METHODS = {
    "raw": ("raw", None, {}),
    "combat": ("ComBat", "combat", dict(log_features=True)),
    "combat-gam": ("ComBat-GAM", "combat-gam", dict(log_features=True)),
    "combat-ls": ("ComBat-LS", "combat-ls", dict(log_features=True)),
    "covbat": ("CovBat", "covbat", dict(log_features=True)),
    "flow-scm": ("flow-SCM quadratic spline (default until 2026-12-07)", "flow-scm", dict(log_features=True, flow="quadratic-spline")),
    "flow-scm-affine": ("flow-SCM affine (default)", "flow-scm", dict(log_features=True, flow="affine")),
    # not in the default run: the third flow of the paper
    "flow-scm-linear-spline": ("flow-SCM linear spline", "flow-scm", dict(log_features=True, flow="linear-spline")),
}
DEFAULT_METHODS = "raw,combat,combat-gam,combat-ls,covbat,flow-scm,flow-scm-affine"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder holding fcon1000_tr.csv and fcon1000_te.csv")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="seeds of the folds, the harmonizers and the MLPs")
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated keys of {', '.join(METHODS)}")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-real-roi"),
                        help="folder for results.json and results.md")
    parser.add_argument("--min-site-scans", type=int, default=20, help="sites with fewer scans are dropped")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--flow-epochs", type=int, default=None,
                        help="flow-SCM epochs (default: the package default, 100)")
    parser.add_argument("--mlp-epochs", type=int, default=100, help="epochs of the Table-5 MLP")
    parser.add_argument("--paper-source", default="auto",
                        help="source site of protocol (d) ('auto': the widest age range)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------- data
def load_fcon1000(folder: Path, min_site_scans: int = 20):
    """Pooled FCON1000 aseg volumes of the sites with >= ``min_site_scans`` scans.

    Returns
    -------
    features : DataFrame (scans x volumes, mm^3), covariates : DataFrame (site, age, sex,
    participant_id), dropped : dict of dropped volume columns and why.
    """
    frames = [pd.read_csv(folder / f"fcon1000_{part}.csv") for part in ("tr", "te")]
    table = pd.concat(frames, ignore_index=True)
    table = table.drop(columns=[c for c in table.columns if str(c).startswith("Unnamed")])
    counts = table["site"].value_counts()
    table = table[table["site"].isin(counts[counts >= min_site_scans].index)].reset_index(drop=True)
    if table["sub_id"].duplicated().any():
        raise SystemExit("fcon1000: a sub_id appears twice")
    candidates = [c for c in table.columns if c not in COVARIATE_COLUMNS and not c.endswith("_thickness")
                  and "to-eTIV" not in c and "SurfaceHoles" not in c]
    dropped = {}
    if "EstimatedTotalIntraCranialVol" in candidates and "eTIV" in candidates \
            and np.allclose(table["eTIV"], table["EstimatedTotalIntraCranialVol"]):
        candidates.remove("EstimatedTotalIntraCranialVol")
        dropped["EstimatedTotalIntraCranialVol"] = "identical to eTIV"
    volumes = []
    for column in candidates:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = int((~(values > 0)).sum())
        if bad:
            dropped[column] = f"{bad} scan(s) with a zero or missing volume"
        else:
            volumes.append(column)
    index = pd.Index(table["sub_id"].astype(str), name="participant_id")
    features = table[volumes].astype(np.float64).set_axis(index)
    covariates = pd.DataFrame({"site": table["site"].astype(str).to_numpy(),
                               "age": table["age"].astype(np.float64).to_numpy(),
                               "sex": table["sex"].astype(int).to_numpy(),
                               "participant_id": index.to_numpy()}, index=index)
    return features, covariates, dropped


# ------------------------------------------------------------------------- evaluation
def factory(key: str, reference_site: str, seed: int, args):
    label, name, params = METHODS[key]
    if name is None:
        return None
    from bidsharmony.harmonize import get_harmonizer

    extra = {}
    if name == "flow-scm":
        extra["num_threads"] = args.threads
        if args.flow_epochs is not None:
            extra["epochs"] = args.flow_epochs
    return lambda: get_harmonizer(name, reference_site=reference_site, random_seed=seed, **params, **extra)


def log_folds(fold_data):
    """The same folds with log-volumes (what every metric is computed on)."""
    from bidsharmony.evaluation import FoldData

    out = []
    for fd in fold_data:
        tables = [fd.train, fd.test, *fd.masked_test.values()]
        if any((t.to_numpy() <= 0).any() for t in tables):
            raise ValueError("a harmonized volume is <= 0; its log is undefined")
        out.append(FoldData(fold=fd.fold, train=np.log(fd.train), test=np.log(fd.test),
                            masked_test={k: np.log(v) for k, v in fd.masked_test.items()},
                            fit_seconds=fd.fit_seconds, transform_seconds=fd.transform_seconds))
    return out


def age_partial_r(log_table: pd.DataFrame, covariates: pd.DataFrame) -> pd.Series:
    """Within-site partial correlation of each log-volume with age (sex and site adjusted)."""
    from bidsharmony.evaluation import effect_sizes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        effects = effect_sizes(log_table, covariates, terms=("age", "sex"), diagnosis_column=None,
                               adjust_for_site=True)
    return effects[effects["term"] == "age"].set_index("feature")["partial_r"]


def run_method(key, seed, folds, features, covariates, context, args, clock):
    """All metrics of one method and seed. Returns (row of headline figures, cross-site rows, extras)."""
    from bidsharmony.evaluation import (cross_fit, cross_site_from_folds, harmonize_in_folds,
                                        site_predictability_from_folds)

    label = METHODS[key][0]
    make = factory(key, context["reference"], seed, args)
    masks = ("age",) if make is not None else ()
    fold_data, messages = [], Counter()
    for fold in folds:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fold_data += harmonize_in_folds(features, covariates, make, [fold], mask_columns=masks)
        messages.update(f"{w.category.__name__}: {str(w.message)[:240]}" for w in caught)
        fd = fold_data[-1]
        print(f"[{clock():7.1f} s] {label} | seed {seed} | fold {fold.index + 1}/{len(folds)} | "
              f"fit {fd.fit_seconds:.2f} s, transform {fd.transform_seconds:.3f} s", flush=True)
    n_positive_violations = int(sum(int((t.to_numpy() <= 0).sum()) for fd in fold_data
                                    for t in (fd.train, fd.test, *fd.masked_test.values())))
    logged = log_folds(fold_data)
    common = dict(method=label, seed=seed)

    # (a) site predictability
    site, _ = site_predictability_from_folds(logged, covariates, method=label, classifier="logistic", seed=seed,
                                             diagnosis_column=None)
    site_raw, _ = site_predictability_from_folds(logged, covariates, method=label, classifier="logistic",
                                                 seed=seed, adjust_for=None, diagnosis_column=None)
    # (b) and (d): Table-5 MLP, held-out rows harmonized with a masked age
    sources = context["all_sites"] if make is None else sorted({context["largest"], context["paper_source"]})
    mlp = dict(predictor="mlp", diagnosis_column=None, seed=seed, mlp_epochs=args.mlp_epochs,
               n_threads=args.threads)
    cross = cross_site_from_folds(logged, covariates, method=label, sources=sources, use_masked=make is not None,
                                  **mlp).assign(seed=seed)
    leaky_mae = float("nan")
    if make is not None:
        leaky = cross_site_from_folds(logged, covariates, method=label, sources=[context["largest"]],
                                      use_masked=False, **mlp)
        leaky = leaky[leaky["target_site"] != context["largest"]]
        leaky_mae = float(leaky.groupby("target_site")["value"].mean().mean())
    largest = cross[(cross["source_site"] == context["largest"]) & (cross["target_site"] != context["largest"])]
    mae_by_target = largest.groupby("target_site")["value"].mean()
    # (c) age effects on the cross-fitted (out-of-fold) harmonized table
    partial = age_partial_r(cross_fit(logged, features), covariates).reindex(context["raw_partial_r"].index)
    raw_r = context["raw_partial_r"]
    row = {
        **common,
        "site_ba": float(site["balanced_accuracy"]),
        "site_ba_unadjusted": float(site_raw["balanced_accuracy"]),
        "site_chance": float(site["chance"]),
        "age_mae": float(mae_by_target.mean()),
        "age_mae_true_age_given": leaky_mae,
        "age_effect_r": float(np.corrcoef(partial.to_numpy(), raw_r.to_numpy())[0, 1]),
        "age_effect_ratio": float(partial.abs().mean() / raw_r.abs().mean()),
        "fit_seconds": float(np.mean([fd.fit_seconds for fd in fold_data])),
        "transform_rows_per_s": float(sum(len(fd.fold.train) + len(fd.fold.test) * (1 + len(masks))
                                          for fd in fold_data) / max(sum(fd.transform_seconds for fd in fold_data),
                                                                     1e-9)) if make is not None else float("nan"),
        "nonpositive_outputs": n_positive_violations,
    }
    extras = {"mae_by_target": mae_by_target.to_dict(), "age_partial_r": partial.to_dict(),
              "warnings": dict(messages.most_common(8))}
    print(f"[{clock():7.1f} s] {label} | seed {seed} | site BA {row['site_ba']:.3f}, age MAE {row['age_mae']:.2f} "
          f"(true age given: {leaky_mae:.2f}), age-effect r {row['age_effect_r']:.4f}, "
          f"ratio {row['age_effect_ratio']:.3f}", flush=True)
    return row, cross, extras


# ------------------------------------------------------------------------------ output
def mean_sd(values, digits=3) -> str:
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if values.size == 0:
        return "–"
    sd = values.std(ddof=1) if values.size > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {sd:.{digits}f}"


def markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(frame.shape[1])) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def headline_table(rows: pd.DataFrame, labels, context) -> pd.DataFrame:
    out = []
    for label in labels:
        r = rows[rows["method"] == label]
        if r.empty:
            continue
        out.append({
            "method": label,
            f"site BA (chance {context['chance']:.3f})": mean_sd(r["site_ba"]),
            "site BA, no age/sex adjustment": mean_sd(r["site_ba_unadjusted"]),
            f"age MAE, {context['largest']} → {len(context['all_sites']) - 1} sites (y)": mean_sd(r["age_mae"], 2),
            "age MAE, true age given (leaky)": mean_sd(r["age_mae_true_age_given"], 2),
            "age-effect r vs raw": mean_sd(r["age_effect_r"], 4),
            "age-effect magnitude ratio": mean_sd(r["age_effect_ratio"], 3),
            "fit s / fold": mean_sd(r["fit_seconds"], 2),
            "transform rows/s": mean_sd(r["transform_rows_per_s"], 0),
        })
    return pd.DataFrame(out)


def paper_tables(cross: pd.DataFrame, labels, source: str):
    """Per-target MAE (mean ± sd over seeds) for one source: TarOnly, SrcOnly, every method."""
    from bidsharmony.evaluation import summarize_cross_site

    per_seed = []
    for seed, part in cross.groupby("seed"):
        summary = summarize_cross_site(part.drop(columns="seed"), raw_method="raw")
        summary = summary[(summary["source_site"] == source) & (summary["task"] == "age")]
        per_seed.append(summary.assign(seed=seed))
    summary = pd.concat(per_seed, ignore_index=True)
    summary["column"] = np.where(summary["method"] == "TarOnly", "TarOnly",
                                 np.where(summary["method"] == "raw", "SrcOnly (raw)", summary["method"]))
    off = summary[summary["source_site"] != summary["target_site"]]
    columns = ["TarOnly", "SrcOnly (raw)"] + [label for label in labels if label != "raw"]
    columns = [c for c in columns if c in set(off["column"])]
    targets = sorted(set(off["target_site"]))
    rows = []
    for target in targets:
        row = {"target site": target}
        for column in columns:
            v = off[(off["target_site"] == target) & (off["column"] == column)]["value"]
            row[column] = mean_sd(v, 2)
        rows.append(row)
    means = off.groupby(["seed", "column"])["value"].mean().unstack()  # mean over targets, per seed
    rows.append({"target site": "**mean over targets**", **{c: f"**{mean_sd(means[c], 2)}**" for c in columns}})
    gap = {}
    for column in columns[2:]:
        closed = (means["SrcOnly (raw)"] - means[column]) / (means["SrcOnly (raw)"] - means["TarOnly"])
        gap[column] = closed
    rows.append({"target site": "gap closed (SrcOnly→TarOnly)", "TarOnly": "1", "SrcOnly (raw)": "0",
                 **{c: mean_sd(gap[c], 3) for c in gap}})
    within = summary[(summary["source_site"] == summary["target_site"])]
    rows.append({"target site": f"within {source} (5-fold)",
                 **{c: mean_sd(within[within["column"] == c]["value"], 2) for c in columns if c != "TarOnly"},
                 "TarOnly": "–"})
    return pd.DataFrame(rows)[["target site", *columns]], means, gap


def verdict(rows: pd.DataFrame, labels) -> list[str]:
    """Plain statements computed from the per-seed figures."""
    lines = []
    means = rows.groupby("method")[["site_ba", "age_mae", "age_effect_r", "age_effect_ratio"]].mean()
    harmonized = [m for m in labels if m != "raw" and m in means.index]
    for column, name in (("site_ba", "site BA"), ("age_mae", "age MAE")):
        order = sorted(harmonized, key=lambda m: means.loc[m, column])
        if len(order) >= 2:
            lines.append(f"- {name}: best {order[0]} ({means.loc[order[0], column]:.3f}), next {order[1]} "
                         f"({means.loc[order[1], column]:.3f}), raw {means.loc['raw', column]:.3f}"
                         if "raw" in means.index else f"- {name}: best {order[0]}")
    kept = [m for m in harmonized if means.loc[m, "age_effect_r"] >= 0.99
            and abs(means.loc[m, "age_effect_ratio"] - 1) <= 0.05]
    lines.append(f"- age effects kept (r >= 0.99, ratio within ±5 %): {', '.join(kept) or 'none'}")
    family = [m for m in harmonized if m in COMBAT_FAMILY]
    flows = [m for m in harmonized if m.startswith("flow-SCM")]
    if family and flows:
        per_seed = rows.pivot(index="seed", columns="method")
        for column, name in (("site_ba", "site BA"), ("age_mae", "age MAE")):
            best_family = min(family, key=lambda m: means.loc[m, column])
            for flow in flows:
                wins = int((per_seed[column][flow] < per_seed[column][best_family]).sum())
                diff = means.loc[flow, column] - means.loc[best_family, column]
                lines.append(f"- {flow} vs best ComBat-family on {name} ({best_family}): {diff:+.3f} "
                             f"({'better' if diff < 0 else 'worse'}), lower on {wins}/{len(per_seed)} seeds")
    return lines


def git_state() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "bidsharmony"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + (" (bidsharmony/ modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from bidsharmony.evaluation import make_folds

    keys = [k.strip() for k in args.methods.split(",") if k.strip()]
    unknown = [k for k in keys if k not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if "raw" not in keys:
        keys.insert(0, "raw")  # SrcOnly/TarOnly bounds and the raw age effects
    labels = [METHODS[k][0] for k in keys]

    started = time.perf_counter()
    clock = lambda: time.perf_counter() - started  # noqa: E731
    features, covariates, dropped = load_fcon1000(args.data, args.min_site_scans)
    sites, counts = np.unique(covariates["site"], return_counts=True)
    largest = sorted(sites, key=lambda s: (-counts[list(sites).index(s)], s))[0]
    ranges = covariates.groupby("site")["age"].agg(lambda a: a.max() - a.min())
    paper_source = ranges.idxmax() if args.paper_source == "auto" else args.paper_source
    if paper_source not in sites:
        raise SystemExit(f"--paper-source {paper_source!r} is not a kept site")
    context = {"reference": largest, "largest": largest, "paper_source": paper_source,
               "all_sites": list(sites), "chance": 1.0 / len(sites),
               "raw_partial_r": age_partial_r(np.log(features), covariates)}
    command = "NIPYPE_NO_ET=1 python benchmarks/bench_real_roi.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    header = [
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; commit {git_state()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, shared with other jobs (load average "
        f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())} at start); Python {platform.python_version()}, "
        f"torch {torch.__version__}, {args.threads} torch thread(s), one process",
        f"- command: `{command}`",
        f"- seeds: {', '.join(map(str, args.seeds))} (folds, harmonizer random_seed, MLP seeds)",
        f"- data: FCON1000 aseg ({args.data}), {len(sites)} sites with >= {args.min_site_scans} scans, "
        f"{len(features)} scans x {features.shape[1]} volumes; dropped: "
        + "; ".join(f"{c} ({why})" for c, why in dropped.items()),
        f"- reference site of every harmonizer and MLP source of (b): {largest} ({counts.max()} scans, ages "
        f"{covariates.loc[covariates.site == largest, 'age'].min():.0f}-"
        f"{covariates.loc[covariates.site == largest, 'age'].max():.0f}); source of (d): {paper_source} (ages "
        f"{covariates.loc[covariates.site == paper_source, 'age'].min():.0f}-"
        f"{covariates.loc[covariates.site == paper_source, 'age'].max():.0f})",
        f"- protocol: {args.folds}-fold participant-grouped site-stratified CV per seed; flow-SCM epochs: "
        f"{'package default' if args.flow_epochs is None else args.flow_epochs}; MLP epochs {args.mlp_epochs}",
    ]
    print("\n".join(header), flush=True)

    rows, cross_parts, extras = [], [], {}
    for seed in args.seeds:
        folds = make_folds(covariates, args.folds, seed=seed)
        for key, label in zip(keys, labels):
            try:
                row, cross, extra = run_method(key, seed, folds, features, covariates, context, args, clock)
            except Exception as error:  # noqa: BLE001 - one failing method must not lose the run
                print(f"[{clock():7.1f} s] {label} | seed {seed} | FAILED: {type(error).__name__}: {error}",
                      flush=True)
                extras.setdefault(label, {})[f"seed {seed}"] = {"failed": f"{type(error).__name__}: {error}"}
                continue
            rows.append(row)
            cross_parts.append(cross)
            extras.setdefault(label, {})[f"seed {seed}"] = extra
    rows = pd.DataFrame(rows)
    cross = pd.concat(cross_parts, ignore_index=True)
    seconds = clock()

    table = headline_table(rows, labels, context)
    largest_table, _, _ = paper_tables(cross, labels, largest)
    paper_table, paper_means, gap = paper_tables(cross, labels, paper_source)
    lines = verdict(rows, labels)
    report = "\n".join([
        "## Real ROI volumes: FCON1000 (issue 20)\n", *header, f"- wall time: {seconds / 60:.1f} min\n",
        "Headline (mean ± sd over seeds):\n", markdown(table),
        f"\nProtocol (d), source {paper_source}: age MAE (years) per target site, mean ± sd over seeds\n",
        markdown(paper_table),
        f"\nProtocol (b) per target, source {largest}: age MAE (years), mean ± sd over seeds\n",
        markdown(largest_table),
        "\nVerdict (computed):\n", *lines,
    ])
    print("\n" + report, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(report + "\n")
    payload = {
        "header": header, "seconds": seconds, "config": {**vars(args), "data": str(args.data), "out": str(args.out)},
        "features": list(features.columns), "dropped": dropped, "sites": dict(zip(sites, counts.tolist())),
        "largest_site": largest, "paper_source": paper_source,
        "per_seed": rows.to_dict(orient="records"),
        "cross_site_per_fold": cross.to_dict(orient="records"),
        "paper_mean_over_targets": paper_means.reset_index().to_dict(orient="records"),
        "paper_gap_closed": {k: v.tolist() for k, v in gap.items()},
        "raw_age_partial_r": context["raw_partial_r"].to_dict(), "per_method": extras, "verdict": lines,
    }
    (args.out / "results.json").write_text(json.dumps(jsonable(payload), indent=1))
    print(f"\nwritten: {args.out / 'results.json'}, {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
