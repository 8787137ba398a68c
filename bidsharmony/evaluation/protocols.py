"""Leakage-safe protocol: the harmonizer is fitted inside the training fold only.

Harmonizing the whole table and *then* splitting it into training and test sets lets the test
rows shape the site correction the model is trained with — the leakage trap described by
Marzi et al. (Sci Data 2024). Every metric of :mod:`bidsharmony.evaluation` that trains
something therefore goes through :func:`harmonize_in_folds`:

1. the rows are split into participant-grouped, site-stratified folds (:func:`make_folds`);
2. for each fold a **fresh** harmonizer is fitted on the training rows only;
3. it transforms the training rows (what predictors are trained on) and, separately, the
   held-out test rows (what predictors are scored on).

Stitching the test-row outputs of all folds together gives a *cross-fitted* harmonized table
(:func:`cross_fit`): every row was harmonized by a model that never saw it. Descriptive
metrics (distribution distances, effect sizes, error to the truth, ICC) are computed on it.

Harmonizers may optionally expose a model log-likelihood: a method
``log_likelihood(features, covariates)`` or ``log_prob(features, covariates)`` (as the
flow-SCM harmonizer has) returning per-row log-likelihoods (or their mean), and/or an
attribute ``log_likelihood_`` set by ``fit``. The mean per scan on the training rows and on
the held-out rows is recorded when present.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._common import (
    AGE,
    EvaluationError,
    Fold,
    IdentityHarmonizer,
    as_factory,
    check_tables,
    make_folds,
    new_harmonizer,
    site_labels,
    transform_frame,
)

__all__ = ["Fold", "FoldData", "make_folds", "harmonize_in_folds", "cross_fit", "mask_covariate"]


@dataclass
class FoldData:
    """A harmonizer fitted on one training fold, and what it produced.

    Attributes
    ----------
    fold : Fold
        Positional training/test rows.
    train : pandas.DataFrame
        Harmonized training rows (the harmonizer was fitted on exactly these rows).
    test : pandas.DataFrame
        Harmonized test rows (never seen by the fit).
    masked_test : dict
        ``{covariate: harmonized test rows}`` where that covariate's test values were hidden
        from ``transform`` (replaced by the training value of the row's site), for predicting
        that covariate without giving the harmonizer the answer.
    harmonizer : object or None
        The fitted harmonizer (kept only when asked).
    fit_seconds, transform_seconds : float
    log_likelihood_train, log_likelihood_test : float
        Mean per-row model log-likelihood when the harmonizer exposes one, else NaN.
    """

    fold: Fold
    train: pd.DataFrame
    test: pd.DataFrame
    masked_test: dict = field(default_factory=dict)
    harmonizer: object = None
    fit_seconds: float = 0.0
    transform_seconds: float = 0.0
    log_likelihood_train: float = float("nan")
    log_likelihood_test: float = float("nan")


def mask_covariate(train_covariates: pd.DataFrame, test_covariates: pd.DataFrame, column: str) -> pd.DataFrame:
    """Copy of ``test_covariates`` with ``column`` replaced by a value learnt on the training rows.

    Numeric columns get the training mean of the row's site, others the most frequent
    training value of the site (the pooled training value for a site absent from training).
    """
    out = test_covariates.copy()
    train_sites = site_labels(train_covariates)
    test_sites = site_labels(test_covariates)
    train_values = train_covariates[column]
    numeric = pd.api.types.is_numeric_dtype(train_values) and not pd.api.types.is_bool_dtype(train_values)

    def summary(values: pd.Series):
        if numeric:
            return float(values.mean())
        return values.astype(str).value_counts().sort_index().idxmax() if values.dtype == object \
            else values.value_counts().sort_index().idxmax()

    pooled = summary(train_values)
    replacement = []
    for site in test_sites:
        mask = train_sites == site
        replacement.append(summary(train_values[mask]) if mask.any() else pooled)
    if numeric:
        out[column] = np.asarray(replacement, dtype=np.float64)
    else:
        out[column] = pd.Series(replacement, index=out.index).astype(test_covariates[column].dtype, errors="ignore")
    return out


#: methods tried, in order, for a per-row model log-likelihood ``f(features, covariates)``
LOG_LIKELIHOOD_METHODS = ("log_likelihood", "log_prob")


def _log_likelihood(harmonizer, features: pd.DataFrame, covariates: pd.DataFrame) -> float:
    method = next((getattr(harmonizer, name) for name in LOG_LIKELIHOOD_METHODS
                   if callable(getattr(harmonizer, name, None))), None)
    if method is None:
        return float("nan")
    try:
        value = np.asarray(method(features, covariates), dtype=np.float64)
    except Exception:  # noqa: BLE001 - an optional diagnostic must never break an evaluation
        return float("nan")
    return float(np.mean(value)) if value.size else float("nan")


def harmonize_in_folds(features: pd.DataFrame, covariates: pd.DataFrame, harmonizer, folds, *,
                       mask_columns=(), keep_models: bool = False) -> list[FoldData]:
    """Fit a fresh harmonizer on each training fold and apply it to both sides.

    Parameters
    ----------
    features, covariates : pandas.DataFrame
        Same index; covariates hold ``site`` and whatever the harmonizer needs.
    harmonizer : None, str, class, instance or zero-argument factory
        See :func:`bidsharmony.evaluation._common.as_factory`; ``None`` is no harmonization.
    folds : list of Fold
        From :func:`make_folds`.
    mask_columns : sequence of str
        Covariates to hide from ``transform`` on the test rows, one extra transform each
        (see :func:`mask_covariate`).
    keep_models : bool
        Keep each fitted harmonizer in :attr:`FoldData.harmonizer`.

    Returns
    -------
    list of FoldData
    """
    check_tables(features, covariates)
    factory = as_factory(harmonizer)
    out = []
    for fold in folds:
        if np.intersect1d(fold.train, fold.test).size:
            raise EvaluationError(f"fold {fold.index} has rows on both sides")
        model = new_harmonizer(factory)
        f_train, c_train = features.iloc[fold.train], covariates.iloc[fold.train]
        f_test, c_test = features.iloc[fold.test], covariates.iloc[fold.test]
        started = time.perf_counter()
        fitted = model.fit(f_train, c_train)
        model = fitted if fitted is not None else model
        fit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        train_h = transform_frame(model, f_train, c_train)
        test_h = transform_frame(model, f_test, c_test)
        masked = {}
        for column in mask_columns:
            if column in covariates.columns:
                masked[column] = transform_frame(model, f_test, mask_covariate(c_train, c_test, column))
        transform_seconds = time.perf_counter() - started
        ll_train = _log_likelihood(model, f_train, c_train)
        if not np.isfinite(ll_train):
            attribute = getattr(model, "log_likelihood_", None)
            try:
                ll_train = float(attribute) if attribute is not None else float("nan")
            except (TypeError, ValueError):
                ll_train = float("nan")
        out.append(FoldData(
            fold=fold, train=train_h, test=test_h, masked_test=masked,
            harmonizer=model if keep_models else None, fit_seconds=fit_seconds,
            transform_seconds=transform_seconds, log_likelihood_train=ll_train,
            log_likelihood_test=_log_likelihood(model, f_test, c_test)
            if not isinstance(model, IdentityHarmonizer) else float("nan"),
        ))
    return out


def cross_fit(fold_data: list[FoldData], features: pd.DataFrame) -> pd.DataFrame:
    """Stitch the test-side outputs of all folds into one out-of-fold harmonized table.

    Every row is harmonized by the model fitted on the folds it was *not* in. Rows are
    returned in the order of ``features``.
    """
    pieces = [fd.test for fd in fold_data]
    table = pd.concat(pieces, axis=0)
    if table.index.duplicated().any():
        raise EvaluationError("a row is in the test side of more than one fold")
    missing = features.index.difference(table.index)
    if len(missing):
        raise EvaluationError(f"{len(missing)} row(s) are in no test fold")
    return table.loc[features.index, list(features.columns)]


def default_mask_columns(covariates: pd.DataFrame, diagnosis_column: str | None) -> tuple:
    """Covariates that are prediction targets of the cross-site protocol."""
    columns = [AGE] if AGE in covariates.columns else []
    if diagnosis_column and diagnosis_column in covariates.columns:
        columns.append(diagnosis_column)
    return tuple(columns)
