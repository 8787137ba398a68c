"""Benchmark equivariant dataset pooling (Lokhande et al. 2022) against its baselines; prints markdown.

Data: :func:`bidsharmony.datasets.tabular.make_feature_table` — 3 sites whose **age ranges
differ** (25-85, 20-55 and 55-90 years, the default), non-linear site effects, ROI volumes with
non-linear age effects and a hidden diagnosis (prevalence 0.3, the same at every site) that is
given to the models as the prediction target ``h`` (as AD/CN in the paper). Each seed draws a
new table and a new 70/30 train/test split; every model is fitted on the training rows and
every measure is computed on the held-out rows.

Methods (same networks, :class:`bidsharmony.features.pooling.EquivariantPooling`):

* **Naïve** — ``variant="naive"``: autoencoder + predictor, no MMD, no equivariance;
* **MMD** — ``variant="mmd"``: MMD between sites on ``b(ℓ)``, no equivariance;
* **Ours (expm)** / **Ours (Cayley)** — the defaults, ``G(i, j)`` by the matrix exponential
  or the Cayley map;
* **Ours, A.7 weights, MMD on Φ** — the paper's weights (stage one 1.0 / 0.02, stage two MMD
  0.1) and Eq. 7 as written (``mmd_on="representation"``);
* **age only** (reference) — the representation is the age itself: the Adv an adversary reaches
  from age alone, i.e. what any age-preserving representation leaks here.

Measures (:mod:`bidsharmony.evaluation.representation`): **ΔEq** (Eq. 8, on τ for ours, on the
representation for the baselines; Eq. 10-normalised), **ΔEq(Φ)** (Eq. 8 on the representation
for every method), **Adv** (held-out balanced accuracy of a
3-layer MLP site adversary trained on the training rows' representations; chance 1/3),
**Adv|age** (the same after removing a spline of age from the representation), **M** (MMD²
between sites on held-out rows, Eq. 10-normalised, mean over site pairs), **M|age**, **ACC**
(held-out accuracy of the model's own predictor ``h``; majority class ~0.70), fit time.

Run ``python benchmarks/bench_pooling.py --help``; the defaults take about 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import time
import warnings
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from bidsharmony.datasets.tabular import make_feature_table
from bidsharmony.features.pooling import EquivariantPooling
from bidsharmony.evaluation.representation import evaluate_representation, site_adversary

#: (key for --methods, label, parameters)
METHODS = [
    ("naive", "Naïve", dict(variant="naive")),
    ("mmd", "MMD", dict(variant="mmd")),
    ("expm", "Ours (expm)", dict()),
    ("cayley", "Ours (Cayley)", dict(group_map="cayley")),
    ("paper", "Ours, A.7 weights, MMD on Φ", dict(reconstruction_weight_stage1=0.02, mmd_weight=0.1,
                                                   mmd_on="representation")),
]
COLUMNS = [("delta_eq", "ΔEq ↑"), ("delta_eq_phi", "ΔEq(Φ) ↑"), ("adv", "Adv ↓"), ("adv_given_age", "Adv\\|age ↓"), ("mmd", "M ↓ (×100)"),
           ("mmd_given_age", "M\\|age ↓ (×100)"), ("acc", "ACC % ↑"), ("fit_seconds", "fit s")]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (data, split, models)")
    parser.add_argument("--n-per-site", type=int, default=300)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--methods", default="", help="comma-separated subset of: " + ", ".join(m[0] for m in METHODS))
    parser.add_argument("--verbose", action="store_true", help="log every training epoch")
    return parser.parse_args(argv)


def make_data(seed: int, args):
    table = make_feature_table(args.n_per_site, n_sites=3, n_features=args.features, seed=seed)
    covariates = table.covariates.copy()
    covariates["diagnosis"] = table.hidden["diagnosis"].map({0: "CN", 1: "AD"})
    test = np.random.default_rng(seed).random(len(covariates)) < 0.3
    return table.features, covariates, test


def run(args) -> tuple[pd.DataFrame, dict]:
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    wanted = [w.strip().lower() for w in args.methods.split(",") if w.strip()]
    methods = [m[1:] for m in METHODS if not wanted or m[0] in wanted]
    rows, info = [], {}
    for seed in seeds:
        features, covariates, test = make_data(seed, args)
        train_f, train_c, test_f, test_c = features[~test], covariates[~test], features[test], covariates[test]
        info = {"n_train": int((~test).sum()), "n_test": int(test.sum()),
                "majority": float((test_c.diagnosis == "CN").mean()),
                "ranges": covariates.groupby("site").age.agg(["min", "max"]).round(0).astype(int).to_dict("index")}
        for label, params in methods:
            logging.info("seed %d: %s", seed, label)
            model = EquivariantPooling(target="diagnosis", random_seed=seed, num_threads=args.threads, **params)
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the sites' age ranges differ on purpose
                model.fit(train_f, train_c)
            fit_seconds = time.perf_counter() - started
            scores = evaluate_representation(model, train_f, train_c, test_f, test_c, seed=seed,
                                             n_threads=args.threads)
            rows.append({"method": label, "seed": seed, "fit_seconds": fit_seconds, **scores})
        age = site_adversary(train_c[["age"]].to_numpy(), train_c.site, test_c[["age"]].to_numpy(), test_c.site,
                             seed=seed, n_threads=args.threads)
        rows.append({"method": "age only (reference)", "seed": seed, "adv": age["balanced_accuracy"]})
    return pd.DataFrame(rows), info


def _cell(values: pd.Series, key: str) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    scale = 100.0 if key in ("mmd", "mmd_given_age", "acc") else 1.0
    mean, sd = values.mean() * scale, values.std(ddof=1) * scale if len(values) > 1 else float("nan")
    digits = 1 if key in ("acc", "fit_seconds", "delta_eq", "delta_eq_phi") else 2
    return f"{mean:.{digits}f} ({sd:.{digits}f})" if np.isfinite(sd) else f"{mean:.{digits}f}"


def markdown(results: pd.DataFrame, info: dict, args, seconds: float) -> str:
    import torch

    seeds = sorted(set(results.seed))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ranges = ", ".join(f"{s} {r['min']}-{r['max']}" for s, r in info["ranges"].items())
    lines = [
        f"### Benchmark run ({now})",
        "",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"torch {torch.__version__} ({args.threads} thread(s))",
        f"- command: `{' '.join(['python', 'benchmarks/bench_pooling.py', *map(shlex.quote, sys.argv[1:])])}` "
        f"({seconds / 60:.1f} min)",
        f"- data: 3 sites x {args.n_per_site} scans, {args.features} ROI volumes, site ages {ranges} (last seed); "
        f"train {info['n_train']} / test {info['n_test']} scans; target: hidden diagnosis (majority class "
        f"{100 * info['majority']:.0f} % of the test rows); mean (SD) over seeds {', '.join(map(str, seeds))}",
        "",
        "| method | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for method in results.method.drop_duplicates():
        part = results[results.method == method]
        cells = [_cell(part[key], key) if key in part else "-" for key, _ in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Adv chance = 0.33 (balanced accuracy, 3 sites)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if not args.verbose:
        logging.getLogger("bidsharmony.features.pooling").setLevel(logging.WARNING)
    started = time.perf_counter()
    results, info = run(args)
    print(markdown(results, info, args, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
