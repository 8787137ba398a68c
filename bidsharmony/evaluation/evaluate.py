"""Run every metric for the raw features and for each harmonizer, leakage-safely.

:func:`evaluate_harmonizers` is the one call behind the group comparison: it makes one set
of participant-grouped folds, fits every harmonizer inside each training fold only (see
:mod:`bidsharmony.evaluation.protocols`), and returns tidy tables in an
:class:`EvaluationResults`, ready for :func:`bidsharmony.reports.group.write_group_report`.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ._common import (
    AGE,
    EvaluationError,
    EvaluationUsageError,
    as_factory,
    as_mapping,
    check_tables,
    make_folds,
    site_labels,
    site_table,
)
from .agreement import traveling_subject_icc, truth_error
from .biology import effect_size_agreement, effect_sizes
from .design import design_warnings
from .distance import site_mmd
from .prediction import cross_site_from_folds, summarize_cross_site
from .protocols import cross_fit, default_mask_columns, harmonize_in_folds
from .recommend import recommend_method
from .site import DEFAULT_ADJUST, site_predictability_from_folds

LOGGER = logging.getLogger(__name__)

ALL_METRICS = ("site", "cross_site", "biology", "truth", "icc", "mmd")

#: what each summary column means, and which direction is better (used by the report)
SUMMARY_COLUMNS = {
    "site_balanced_accuracy": ("Site predictability (balanced accuracy)", "closer to chance"),
    "site_chance": ("Chance level (1/number of sites)", ""),
    "site_chance_upper95": ("Upper 95 % limit of chance", ""),
    "mmd2_vs_reference": ("MMD² to the reference site (mean over sites)", "lower"),
    "mmd2_split_half": ("MMD² between two halves of the reference site (no-difference level)", ""),
    "cross_site_age_mae": ("Cross-site age MAE, years (mean over source→target pairs)", "lower"),
    "cross_site_diagnosis_accuracy": ("Cross-site diagnosis accuracy (mean over pairs)", "higher"),
    "age_effect_r_vs_raw": ("Age effects: correlation with raw across features", "close to 1"),
    "age_effect_r_vs_truth": ("Age effects: correlation with the truth", "higher"),
    "sex_effect_r_vs_raw": ("Sex effects: correlation with raw across features", "close to 1"),
    "sex_effect_r_vs_truth": ("Sex effects: correlation with the truth", "higher"),
    "nrmse_to_truth": ("Error to the truth (RMSE / SD of truth, mean over features)", "lower"),
    "nrmse_centered_to_truth": ("Error to the truth ignoring a constant offset per feature", "lower"),
    "icc_2_1_median": ("Traveling subjects: median ICC(2,1) across features", "higher"),
    "icc_3_1_median": ("Traveling subjects: median ICC(3,1) (ignores site offsets)", "higher"),
    "log_likelihood_train": ("Model log-likelihood per scan, training folds", "higher"),
    "log_likelihood_test": ("Model log-likelihood per scan, held-out folds", "higher"),
    "fit_seconds": ("Fit time per fold, seconds", "lower"),
}


@dataclass
class EvaluationResults:
    """Everything :func:`evaluate_harmonizers` computed, as tidy tables.

    Every table has a ``method`` column (the raw features are ``raw_method``). The
    cross-fitted harmonized tables (each row harmonized by a model that never saw it) are in
    :attr:`harmonized`, keyed by method, for plots.
    """

    methods: list
    raw_method: str | None
    summary: pd.DataFrame
    site_predictability: pd.DataFrame
    site_predictability_folds: pd.DataFrame
    cross_site: pd.DataFrame
    cross_site_folds: pd.DataFrame
    effect_sizes: pd.DataFrame
    effect_agreement: pd.DataFrame
    truth_error: pd.DataFrame
    icc: pd.DataFrame
    mmd: pd.DataFrame
    log_likelihood: pd.DataFrame
    fit_log: pd.DataFrame
    sites: pd.DataFrame
    warnings: list
    harmonized: dict
    features: pd.DataFrame
    covariates: pd.DataFrame
    truth: pd.DataFrame | None
    folds: list
    config: dict
    failed: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    recommendation: dict = field(default_factory=dict)

    _TABLES = ("summary", "site_predictability", "site_predictability_folds", "cross_site", "cross_site_folds",
               "effect_sizes", "effect_agreement", "truth_error", "icc", "mmd", "log_likelihood", "fit_log",
               "sites")

    def tables(self) -> dict:
        """``{name: DataFrame}`` of every result table."""
        return {name: getattr(self, name) for name in self._TABLES}

    def to_dict(self) -> dict:
        """JSON-ready summary: configuration, warnings, failures and the summary table."""
        return {"config": self.config, "methods": self.methods, "raw_method": self.raw_method,
                "warnings": self.warnings, "failed": self.failed, "recommendation": self.recommendation,
                "summary": _records(self.summary), "site_predictability": _records(self.site_predictability),
                "cross_site": _records(self.cross_site), "effect_agreement": _records(self.effect_agreement),
                "sites": _records(self.sites)}

    def write_tables(self, out_dir, prefix: str = "evaluation") -> dict:
        """Write every table as ``<prefix>_<name>.tsv`` and the summary as ``<prefix>.json``
        (atomically) into ``out_dir``; return ``{name: path}``."""
        from ..utils.io import atomic_write_json, atomic_write_text

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, table in self.tables().items():
            path = out_dir / f"{prefix}_{name}.tsv"
            atomic_write_text(path, table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g"))
            paths[name] = path
        paths["json"] = atomic_write_json(out_dir / f"{prefix}.json", self.to_dict())
        return paths


def _records(table: pd.DataFrame) -> list:
    clean = table.astype(object).where(pd.notna(table), None)
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            for row in clean.to_dict(orient="records")]


def _check_truth(truth, features: pd.DataFrame):
    if truth is None:
        return None
    if not isinstance(truth, pd.DataFrame):
        raise EvaluationError("truth must be a DataFrame with the index and feature columns of the features")
    missing = [c for c in features.columns if c not in truth.columns]
    if missing or not features.index.isin(truth.index).all():
        raise EvaluationError("truth must hold every row and feature column of the feature table "
                              f"(missing columns: {', '.join(map(str, missing[:5])) or 'none'})")
    truth = truth.loc[features.index, list(features.columns)].astype(np.float64)
    if not np.isfinite(truth.to_numpy()).all():
        raise EvaluationError("truth holds NaN or infinite values")
    return truth


def evaluate_harmonizers(features: pd.DataFrame, covariates: pd.DataFrame, harmonizers, truth=None, *,
                         n_splits: int = 5, groups="auto", seed: int = 0, metrics=ALL_METRICS,
                         site_classifier="logistic", site_adjust_for=DEFAULT_ADJUST, predictor="mlp",
                         cross_site_sources=None,
                         diagnosis_column: str | None = "diagnosis", reference_site: str | None = None,
                         mask_target_in_transform: bool = True, mlp_epochs: int = 100,
                         mlp_params: dict | None = None, n_threads: int | None = 1,
                         mmd_max_per_site: int = 500, min_site_size: int = 30, include_raw: bool = True,
                         raw_name: str = "raw", on_error: str = "raise",
                         keep_models: bool = False, n_repeats: int = 1) -> EvaluationResults:
    """Evaluate raw features and each harmonizer with every metric, leakage-safely.

    Parameters
    ----------
    features : pandas.DataFrame
        One row per scan, one numeric column per feature (e.g. ROI volumes).
    covariates : pandas.DataFrame
        Same index; ``site``, ``age``, ``sex``, optionally ``diagnosis`` and a participant
        identifier (``participant_id``) for traveling subjects / grouping.
    harmonizers : dict ``{name: spec}`` or sequence of registered names
        ``spec``: a zero-argument factory returning an object with ``fit(features,
        covariates)`` / ``transform(features, covariates)``, a class, an unfitted instance
        (deep-copied per fold), a registered name, or ``None`` (no harmonization; then that
        name replaces ``raw_name``).
    truth : pandas.DataFrame, optional
        Site-free ground truth of every feature (synthetic data); enables the error-to-truth
        metrics and effect sizes of the truth.
    n_splits, groups, seed :
        Participant-grouped, site-stratified folds shared by every method and metric.
    metrics : sequence
        Subset of ``("site", "cross_site", "biology", "truth", "icc", "mmd")``.
    site_classifier : {"logistic", "mlp"} or estimator
    site_adjust_for : sequence or None
        Covariate effects (age spline, sex, diagnosis) removed, per training fold, before
        predicting the site (see :func:`bidsharmony.evaluation.site_predictability`), and
        before the MMD comparison of sites.
    predictor : {"mlp", "linear"} or estimator
        Cross-site predictor (default the Table-5 MLP).
    cross_site_sources : sequence of str, optional
        Source sites of the cross-site protocol (default: every site).
    diagnosis_column : str or None
    reference_site : str, optional
        Reference of the MMD comparison (default: the largest site).
    mask_target_in_transform : bool
        See :func:`bidsharmony.evaluation.cross_site_prediction`.
    mlp_epochs, mlp_params, n_threads :
        MLP settings; ``n_threads`` caps torch threads during training.
    mmd_max_per_site : int
    min_site_size : int
        Threshold of the small-site warning.
    include_raw : bool
        Evaluate the raw features (SrcOnly/TarOnly bounds need them).
    raw_name : str
    on_error : {"raise", "warn"}
        What to do when a harmonizer fails on a fold: stop, or record it (``failed`` and
        ``warnings``) and go on with the other methods.
    keep_models : bool
        Keep the fitted per-fold harmonizers in ``results.models`` (first repeat).
    n_repeats : int
        Repeat the cross-validation with new folds (seed ``seed + r``), new classifier and
        predictor seeds and every harmonizer's ``random_seed`` shifted by ``r``; site
        predictability and cross-site prediction are then averaged, and their SD taken, over
        all repeats × folds. The descriptive metrics (effect sizes, MMD, ICC, error to the
        truth) and the report's plots use the first repeat's cross-fitted tables.

    Returns
    -------
    EvaluationResults
    """
    started_all = time.perf_counter()
    check_tables(features, covariates)
    truth = _check_truth(truth, features)
    metrics = _check_options(metrics, on_error)
    if int(n_repeats) < 1:
        raise EvaluationUsageError(f"n_repeats must be at least 1, got {n_repeats}")
    specs = as_mapping(harmonizers)
    factories, methods, raw_name, include_raw = _methods(specs, include_raw, raw_name)
    folds = make_folds(covariates, n_splits, groups=groups, seed=seed)
    sites = site_labels(covariates).astype(str)
    if reference_site is None:
        reference_site = _largest_site(sites)
    mask_columns = default_mask_columns(covariates, diagnosis_column) if mask_target_in_transform else ()
    mlp = dict(mlp_epochs=mlp_epochs, n_threads=n_threads, mlp_params=mlp_params)

    warning_list = design_warnings(covariates, min_site_size=min_site_size, groups=groups,
                                   diagnosis_column=diagnosis_column)
    fitted = _FoldTables()
    for repeat in range(int(n_repeats)):
        repeat_folds = folds if repeat == 0 else make_folds(covariates, n_splits, groups=groups, seed=seed + repeat)
        for method in methods:
            if method in fitted.failed:
                continue
            factory = None if method == raw_name else _reseeded(factories[method], repeat)
            fold_data = _fit_in_folds(method, factory, features, covariates, repeat_folds, fitted, warning_list,
                                      repeat=repeat, mask_columns=mask_columns, keep_models=keep_models,
                                      on_error=on_error)
            if fold_data is None:
                continue
            if "site" in metrics:
                summary, per_fold = site_predictability_from_folds(fold_data, covariates, method=method,
                                                                   classifier=site_classifier, seed=seed + repeat,
                                                                   adjust_for=site_adjust_for,
                                                                   diagnosis_column=diagnosis_column, **mlp)
                fitted.site_rows.append({**summary, "repeat": repeat})
                fitted.site_folds.append(per_fold.assign(repeat=repeat))
            if "cross_site" in metrics and AGE in covariates.columns:
                fitted.cross_parts.append(cross_site_from_folds(
                    fold_data, covariates, method=method, predictor=predictor, sources=cross_site_sources,
                    diagnosis_column=diagnosis_column, use_masked=bool(mask_columns) and factory is not None,
                    seed=seed + repeat, **mlp).assign(repeat=repeat))
        if n_repeats > 1:
            LOGGER.info("evaluation repeat %d/%d done in %.0f s", repeat + 1, n_repeats,
                        time.perf_counter() - started_all)
    methods = [m for m in methods if m not in fitted.failed]
    fitted.drop(fitted.failed)

    described = _describe_cross_fitted(
        fitted.harmonized, methods, features, covariates, truth, metrics, raw_name=raw_name,
        include_raw=include_raw, groups=groups, reference_site=reference_site,
        mmd_max_per_site=mmd_max_per_site, site_adjust_for=site_adjust_for,
        diagnosis_column=diagnosis_column, seed=seed)
    cross_folds = _stack(fitted.cross_parts)
    cross = summarize_cross_site(cross_folds, raw_method=raw_name if raw_name in methods else None) \
        if len(cross_folds) else pd.DataFrame(columns=["method"])
    site_rows = _pool_repeats(fitted.site_rows, _stack(fitted.site_folds))
    results = EvaluationResults(
        methods=methods, raw_method=raw_name if raw_name in methods else None,
        summary=pd.DataFrame(),
        site_predictability=site_rows,
        site_predictability_folds=_stack(fitted.site_folds), cross_site=cross, cross_site_folds=cross_folds,
        **{name: _stack(parts) for name, parts in described.items()},
        log_likelihood=_stack([pd.DataFrame(fitted.ll_rows)]), fit_log=_stack([pd.DataFrame(fitted.fit_rows)]),
        sites=site_table(covariates, groups, diagnosis_column), warnings=warning_list,
        harmonized=fitted.harmonized, features=features, covariates=covariates, truth=truth, folds=folds,
        failed=fitted.failed, models=fitted.models,
        config=_config(specs, features, sites, metrics, n_splits=n_splits, n_repeats=int(n_repeats), seed=seed,
                       site_classifier=site_classifier, site_adjust_for=site_adjust_for,
                       predictor=predictor, mlp_epochs=mlp_epochs, diagnosis_column=diagnosis_column,
                       reference_site=reference_site, mask_target_in_transform=mask_target_in_transform),
    )
    results.summary = summarize(results)
    results.recommendation = recommend_method(results.summary, results.raw_method)
    results.config["seconds"] = round(time.perf_counter() - started_all, 2)
    return results


def _check_options(metrics, on_error: str) -> tuple:
    """The metrics asked for, as a tuple; refuse an unknown metric or ``on_error``."""
    metrics = tuple(metrics)
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown:
        raise EvaluationUsageError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(ALL_METRICS)}")
    if on_error not in ("raise", "warn"):
        raise EvaluationUsageError("on_error must be 'raise' or 'warn'")
    return metrics


def _methods(specs: dict, include_raw: bool, raw_name: str) -> tuple[dict, list, str, bool]:
    """``(factories, methods, raw_name, include_raw)``: a ``None`` spec names the raw features."""
    factories = {}
    for name, spec in specs.items():
        factories[name] = as_factory(spec)
    identity_names = [n for n, f in factories.items() if f is None]
    if identity_names:
        raw_name = identity_names[0]
        for extra in identity_names[1:]:
            factories.pop(extra)
        include_raw = True
    methods = ([raw_name] if include_raw else []) + [n for n, f in factories.items() if f is not None]
    if not methods:
        raise EvaluationUsageError("nothing to evaluate: give at least one harmonizer or include_raw=True")
    return factories, methods, raw_name, include_raw


def _largest_site(sites: np.ndarray) -> str:
    """The site with the most scans (ties: the first name), the default MMD reference."""
    labels, counts = np.unique(sites, return_counts=True)
    return sorted(labels, key=lambda s: (-counts[list(labels).index(s)], s))[0]


@dataclass
class _FoldTables:
    """What fitting every method in the folds gathers, method by method."""

    failed: dict = field(default_factory=dict)
    harmonized: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    site_rows: list = field(default_factory=list)
    site_folds: list = field(default_factory=list)
    cross_parts: list = field(default_factory=list)
    fit_rows: list = field(default_factory=list)
    ll_rows: list = field(default_factory=list)

    def drop(self, methods) -> None:
        """Forget the scores of ``methods`` (failed in a later repeat: no partial averages)."""
        methods = set(methods)
        self.site_rows = [r for r in self.site_rows if r["method"] not in methods]
        self.site_folds = [t for t in self.site_folds if not t["method"].isin(methods).any()]
        self.cross_parts = [t for t in self.cross_parts if not t["method"].isin(methods).any()]
        self.fit_rows = [r for r in self.fit_rows if r["method"] not in methods]
        self.ll_rows = [r for r in self.ll_rows if r["method"] not in methods]
        for method in methods:
            self.harmonized.pop(method, None)
            self.models.pop(method, None)


def _reseeded(factory, repeat: int):
    """``factory`` whose harmonizers get ``random_seed + repeat`` (unchanged for repeat 0 or
    for harmonizers without an integer ``random_seed`` parameter)."""
    if factory is None or repeat == 0:
        return factory

    def make():
        harmonizer = factory()
        seed = harmonizer.get_params().get("random_seed") if hasattr(harmonizer, "get_params") else None
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            harmonizer.set_params(random_seed=int(seed) + repeat)
        return harmonizer

    return make


def _pool_repeats(site_rows: list, site_folds: pd.DataFrame) -> pd.DataFrame:
    """One site-predictability row per method: the repeats' pooled balanced accuracies
    averaged, mean and SD over every repeat × fold."""
    if not site_rows:
        return pd.DataFrame(columns=["method"])
    table = pd.DataFrame(site_rows)
    out = table.groupby("method", sort=False).first().reset_index()
    pooled = table.groupby("method", sort=False)
    folds = site_folds.groupby("method", sort=False)["balanced_accuracy"]
    out["balanced_accuracy"] = pooled["balanced_accuracy"].mean().to_numpy()
    out["accuracy"] = pooled["accuracy"].mean().to_numpy()
    out["balanced_accuracy_mean"] = folds.mean().reindex(out["method"]).to_numpy()
    out["balanced_accuracy_sd"] = folds.std().reindex(out["method"]).to_numpy()
    out["n_folds"] = pooled["n_folds"].sum().to_numpy()
    out["n_repeats"] = pooled.size().to_numpy()
    return out.drop(columns="repeat")


def _fit_in_folds(method: str, factory, features, covariates, folds, fitted: _FoldTables, warning_list: list, *,
                  repeat: int, mask_columns, keep_models: bool, on_error: str):
    """Fit ``method`` in every training fold and record its fit log and cross-fitted table.

    Returns the per-fold data, or None when the method failed and ``on_error`` is "warn"
    (the failure is then recorded in ``fitted.failed`` and ``warning_list``).
    """
    LOGGER.info("evaluating %s: fitting in %d folds", method, len(folds))
    try:
        # Every fold fit repeats the warnings about the data (age overlap, outliers) and the
        # training log that the fit on all scans gives once: 15 fits x 5 methods buried the log
        # of a 16-site table under ~2,000 lines. One line per method and category counts them.
        with warnings.catch_warnings(record=True) as caught, _quiet_fit_logs():
            warnings.simplefilter("always")
            fold_data = harmonize_in_folds(features, covariates, factory, folds, mask_columns=mask_columns
                                           if factory is not None else (), keep_models=keep_models)
        if repeat == 0:  # later repeats refit on the same scans and warn alike
            _log_fold_warnings(method, caught)
    except Exception as error:  # noqa: BLE001 - reported per method when on_error="warn"
        if on_error == "raise":
            raise
        message = f"{type(error).__name__}: {error}"
        fitted.failed[method] = message
        warning_list.append({"code": "harmonizer_failed", "sites": "", "message":
                             f"Harmonizer {method} failed and is left out of the comparison ({message})."})
        LOGGER.warning("harmonizer %s failed: %s", method, message)
        return None
    if keep_models and repeat == 0:
        fitted.models[method] = [fd.harmonizer for fd in fold_data]
    for fd in fold_data:
        fitted.fit_rows.append({"method": method, "repeat": repeat, "fold": fd.fold.index, "n_train": len(fd.fold.train),
                                "n_test": len(fd.fold.test), "fit_seconds": fd.fit_seconds,
                                "transform_seconds": fd.transform_seconds})
        fitted.ll_rows.append({"method": method, "repeat": repeat, "fold": fd.fold.index,
                               "log_likelihood_train": fd.log_likelihood_train,
                               "log_likelihood_test": fd.log_likelihood_test})
    if repeat == 0:
        fitted.harmonized[method] = cross_fit(fold_data, features)
    return fold_data


#: loggers of the harmonizers' fit progress (epochs, "fitted on"), silenced in the fold fits
_FIT_LOGGERS = ("bidsharmony.scm", "bidsharmony.harmonize", "bidsharmony.features")


@contextmanager
def _quiet_fit_logs():
    """Keep only warnings and errors of the harmonizers' own loggers for the duration."""
    loggers = [logging.getLogger(name) for name in _FIT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _log_fold_warnings(method: str, caught: list) -> None:
    """One log line per warning category of ``method``'s fold fits: the count and the first message."""
    first = {}
    for record in caught:
        first.setdefault(record.category.__name__, str(record.message))
    counts = Counter(record.category.__name__ for record in caught)
    for name, message in first.items():
        LOGGER.warning("evaluating %s: %d fold fit(s) warned %s, first: %s", method, counts[name], name, message)


def _describe_cross_fitted(harmonized: dict, methods: list, features, covariates, truth, metrics, *,
                           raw_name: str, include_raw: bool, groups, reference_site, mmd_max_per_site: int,
                           site_adjust_for, diagnosis_column, seed: int) -> dict:
    """The descriptive metrics of the cross-fitted tables: ``{result table: [parts]}``."""
    effect_tables, agreement_rows, truth_rows, icc_rows, mmd_rows = [], [], [], [], []
    raw_effects = truth_effects = None
    if "biology" in metrics:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            raw_effects = effect_sizes(features, covariates, diagnosis_column=diagnosis_column)
            if truth is not None:
                truth_effects = effect_sizes(truth, covariates, diagnosis_column=diagnosis_column)
                effect_tables.append(truth_effects.assign(method="truth"))
            for method in methods:
                eff = raw_effects if method == raw_name else effect_sizes(
                    harmonized[method], covariates, diagnosis_column=diagnosis_column)
                effect_tables.append(eff.assign(method=method))
                agreement_rows.append(effect_size_agreement(eff, raw_effects if include_raw else None,
                                                            truth_effects).assign(method=method))
    for method in methods:
        table = harmonized[method]
        if "truth" in metrics and truth is not None:
            truth_rows.append(truth_error(table, truth).assign(method=method))
        if "icc" in metrics:
            icc_rows.append(traveling_subject_icc(table, covariates, groups=groups).assign(method=method))
        if "mmd" in metrics:
            mmd_rows.append(site_mmd(table, covariates, reference_site=reference_site,
                                     max_per_site=mmd_max_per_site, adjust_for=site_adjust_for,
                                     diagnosis_column=diagnosis_column, seed=seed).assign(method=method))
    return {"effect_sizes": effect_tables, "effect_agreement": agreement_rows, "truth_error": truth_rows,
            "icc": icc_rows, "mmd": mmd_rows}


def _stack(parts, first=("method",)) -> pd.DataFrame:
    """Concatenate the non-empty tables of ``parts``, ``first`` columns first."""
    parts = [p for p in parts if p is not None and len(p)]
    if not parts:
        return pd.DataFrame(columns=list(first))
    table = pd.concat(parts, ignore_index=True)
    return table[list(first) + [c for c in table.columns if c not in first]]


def _config(specs: dict, features, sites, metrics, *, n_splits: int, n_repeats: int, seed: int, site_classifier,
            site_adjust_for, predictor, mlp_epochs: int, diagnosis_column, reference_site,
            mask_target_in_transform: bool) -> dict:
    """The settings of one evaluation, as recorded in ``results.config`` and the report."""
    return {"n_splits": n_splits, "n_repeats": n_repeats, "seeds": list(range(seed, seed + n_repeats)),
            "seed": seed, "metrics": list(metrics),
            "site_classifier": str(site_classifier),
            "site_adjust_for": ",".join(site_adjust_for or ()) or "nothing", "predictor": str(predictor),
            "mlp_epochs": mlp_epochs,
            "diagnosis_column": diagnosis_column, "reference_site": reference_site,
            "mask_target_in_transform": mask_target_in_transform, "n_scans": int(len(features)),
            "n_features": int(features.shape[1]), "n_sites": int(len(set(sites))),
            "harmonizers": {n: (s if isinstance(s, str) or s is None else type(s).__name__
                                if not callable(s) else getattr(s, "__name__", type(s).__name__))
                            for n, s in specs.items()},
            "chance_level": "balanced accuracy, analytic 1/k", "icc": "ICC(2,1) absolute agreement",
            "mmd": "unbiased MMD², RBF kernel, median-heuristic bandwidth, z-scored features"}


_CROSS_SITE_HEADLINES = {("age", "mae"): "cross_site_age_mae", ("diagnosis", "accuracy"): "cross_site_diagnosis_accuracy"}


def _cross_site_sd(per_fold: pd.DataFrame) -> dict:
    """``{(method, "<headline>_sd"): SD}`` of each cross-site headline (the mean over source →
    target pairs) across folds × repeats."""
    if per_fold is None or per_fold.empty:
        return {}
    off = per_fold[per_fold["source_site"] != per_fold["target_site"]]
    split = [c for c in ("repeat", "fold") if c in off]
    out = {}
    for (method, task, metric), group in off.groupby(["method", "task", "metric"]):
        column = _CROSS_SITE_HEADLINES.get((task, metric))
        if column:
            out[(method, f"{column}_sd")] = float(group.groupby(split)["value"].mean().std())
    return out


def summarize(results: EvaluationResults) -> pd.DataFrame:
    """One row per method with the headline number of each metric (see :data:`SUMMARY_COLUMNS`);
    a ``TarOnly`` row carries the cross-site upper bound."""
    rows = {m: {"method": m} for m in results.methods}
    for _, row in results.site_predictability.iterrows():
        rows[row["method"]].update(site_balanced_accuracy=row["balanced_accuracy"],
                                   site_balanced_accuracy_sd=row["balanced_accuracy_sd"], site_chance=row["chance"],
                                   site_chance_upper95=row["chance_upper95"])
    mmd = results.mmd
    if len(mmd):
        ref = mmd[mmd["comparison"] == "vs_reference"].groupby("method")["mmd2"].mean()
        split = mmd[mmd["comparison"] == "split_half"].groupby("method")["mmd2"].mean()
        for method in ref.index:
            rows[method]["mmd2_vs_reference"] = float(ref[method])
            if method in split.index:
                rows[method]["mmd2_split_half"] = float(split[method])
    cross = results.cross_site
    if len(cross) and "task" in cross:
        off = cross[cross["source_site"] != cross["target_site"]]
        for (method, task, metric), value in off.groupby(["method", "task", "metric"])["value"].mean().items():
            column = _CROSS_SITE_HEADLINES.get((task, metric))
            if column:
                rows.setdefault(method, {"method": method})[column] = float(value)
        for (method, column), value in _cross_site_sd(results.cross_site_folds).items():
            rows.setdefault(method, {"method": method})[column] = value
    agreement = results.effect_agreement
    if len(agreement):
        for _, row in agreement.iterrows():
            if row["term"] in ("age", "sex"):
                rows[row["method"]][f"{row['term']}_effect_r_vs_raw"] = row["r_vs_raw"]
                rows[row["method"]][f"{row['term']}_effect_r_vs_truth"] = row["r_vs_truth"]
    if len(results.truth_error):
        for method, group in results.truth_error.groupby("method"):
            rows[method]["nrmse_to_truth"] = float(group["nrmse"].mean())
            rows[method]["nrmse_centered_to_truth"] = float(group["nrmse_centered"].mean())
    if len(results.icc):
        for method, group in results.icc.groupby("method"):
            rows[method]["icc_2_1_median"] = float(group["icc_2_1"].median())
            rows[method]["icc_3_1_median"] = float(group["icc_3_1"].median())
    if len(results.log_likelihood):
        for method, group in results.log_likelihood.groupby("method"):
            if method in rows:
                rows[method]["log_likelihood_train"] = float(group["log_likelihood_train"].mean())
                rows[method]["log_likelihood_test"] = float(group["log_likelihood_test"].mean())
    if len(results.fit_log):
        for method, value in results.fit_log.groupby("method")["fit_seconds"].mean().items():
            rows[method]["fit_seconds"] = float(value)
    order = [m for m in results.methods] + [m for m in rows if m not in results.methods]
    table = pd.DataFrame([rows[m] for m in order])
    preferred = ["method", "site_balanced_accuracy", "site_chance", "site_chance_upper95", "mmd2_vs_reference",
                 "mmd2_split_half", "cross_site_age_mae", "cross_site_diagnosis_accuracy", "age_effect_r_vs_raw",
                 "age_effect_r_vs_truth", "sex_effect_r_vs_raw", "sex_effect_r_vs_truth", "nrmse_to_truth",
                 "nrmse_centered_to_truth",
                 "icc_2_1_median", "icc_3_1_median", "log_likelihood_train", "log_likelihood_test", "fit_seconds"]
    # every headline number followed by its SD (over folds × repeats) where it has one
    preferred = [c for column in preferred for c in (column, f"{column}_sd")]
    return table[[c for c in preferred if c in table.columns]
                 + [c for c in table.columns if c not in preferred]]
