"""Biology kept: are the associations of age, sex and diagnosis with each feature preserved?

For every feature an ordinary least-squares model ``feature ~ age + sex [+ diagnosis]
[+ site]`` is fitted, and each term is reported as

* ``coef`` — the partial regression coefficient in feature units (per year of age; male minus
  female; diagnosis level minus the reference level);
* ``std_effect`` — a standardised effect size: the coefficient divided by the residual
  standard deviation, with age scaled per standard deviation of age. For a binary term this is
  the covariate-adjusted Cohen's *d*;
* ``t``, ``p``, ``partial_r`` (``t / sqrt(t² + df)``).

Harmonization should leave ``coef`` close to the truth (or to the raw value when the site is
balanced) and, by removing site noise from the residual, may raise ``std_effect``. The
agreement of effect sizes across features — before vs after, and vs the ground truth when it
is known — is summarised by :func:`effect_size_agreement`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import AGE, SEX, EvaluationError, check_tables, sex_numeric, site_labels

__all__ = ["effect_sizes", "effect_size_agreement"]

#: diagnosis labels taken as the reference (control) level when present, in this order
_CONTROL_LEVELS = ("cn", "hc", "nc", "control", "controls", "healthy", "normal", "0", "0.0")


def _reference_level(values: pd.Series, reference=None) -> str:
    levels = values.astype(str)
    if reference is not None:
        if str(reference) not in set(levels):
            raise EvaluationError(f"diagnosis reference level {reference!r} not found "
                                  f"(levels: {', '.join(sorted(set(levels)))})")
        return str(reference)
    for control in _CONTROL_LEVELS:
        matches = sorted(level for level in set(levels) if level.strip().lower() == control)
        if matches:
            return matches[0]
    counts = levels.value_counts()
    top = counts[counts == counts.max()].index
    return sorted(top)[0]


def effect_sizes(features: pd.DataFrame, covariates: pd.DataFrame, *, terms=("age", "sex", "diagnosis"),
                 diagnosis_column: str | None = "diagnosis", diagnosis_reference=None,
                 adjust_for_site: bool = False) -> pd.DataFrame:
    """Per-feature partial associations of age, sex and diagnosis.

    Parameters
    ----------
    features, covariates : pandas.DataFrame
        Same index.
    terms : sequence of {"age", "sex", "diagnosis"}
        Terms to model (absent or constant covariates are skipped).
    diagnosis_column : str or None
        Covariate holding the diagnosis; dummy-coded against ``diagnosis_reference``
        (default: a control label such as ``CN``/``HC``/``control``/``0`` when present, else
        the most frequent level, ties broken alphabetically).
    adjust_for_site : bool
        Add site dummies to the model (default ``False``: the question is whether the
        feature table itself carries the biology free of site).

    Returns
    -------
    pandas.DataFrame
        One row per feature and term: ``feature, term, coef, se, t, p, std_effect,
        partial_r, n, df``.

    Examples
    --------
    >>> effect_sizes(features, covariates).query("term == 'age'")   # doctest: +SKIP
    """
    from scipy import stats

    values = check_tables(features, covariates, require=())
    n = len(values)
    columns, names, per_unit = [np.ones(n)], ["intercept"], [1.0]
    if "age" in terms and AGE in covariates.columns:
        age = pd.to_numeric(covariates[AGE], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(age).all():
            raise EvaluationError("age has missing or non-numeric values")
        sd = age.std(ddof=1)
        if sd > 0:
            columns.append((age - age.mean()) / sd)
            names.append("age")
            per_unit.append(1.0 / sd)
    if "sex" in terms and SEX in covariates.columns:
        sex = sex_numeric(covariates[SEX])
        if np.isnan(sex).any():
            raise EvaluationError("sex has missing or unknown codes (accepted: M/F, male/female, 0/1, 1/2)")
        if len(set(sex)) > 1:
            columns.append(sex)
            names.append("sex")
            per_unit.append(1.0)
    if "diagnosis" in terms and diagnosis_column and diagnosis_column in covariates.columns:
        dx = covariates[diagnosis_column]
        if dx.isna().any():
            raise EvaluationError(f"{diagnosis_column!r} has missing values")
        reference = _reference_level(dx, diagnosis_reference)
        for level in sorted(set(dx.astype(str)) - {reference}):
            columns.append((dx.astype(str) == level).to_numpy(dtype=np.float64))
            names.append(f"diagnosis[{level}]")
            per_unit.append(1.0)
    n_terms = len(names)
    if adjust_for_site:
        sites = site_labels(covariates)
        for site in sorted(set(sites))[1:]:
            columns.append((sites == site).astype(np.float64))
    design = np.column_stack(columns)
    df = n - np.linalg.matrix_rank(design)
    if df < 1:
        raise EvaluationError(f"too few rows ({n}) for the {design.shape[1]} model terms")
    beta, *_ = np.linalg.lstsq(design, values, rcond=None)
    resid = values - design @ beta
    sigma2 = (resid ** 2).sum(axis=0) / df
    xtx_inv = np.linalg.pinv(design.T @ design)
    sigma = np.sqrt(sigma2)
    rows = []
    for j, term in enumerate(names[:n_terms]):
        if term == "intercept":
            continue
        se = np.sqrt(sigma2 * xtx_inv[j, j])
        with np.errstate(divide="ignore", invalid="ignore"):
            t = beta[j] / se
            std = beta[j] / sigma
            partial = t / np.sqrt(t ** 2 + df)
        p = 2 * stats.t.sf(np.abs(t), df)
        for f, feature in enumerate(features.columns):
            rows.append({"feature": str(feature), "term": term, "coef": float(beta[j, f] * per_unit[j]),
                         "se": float(se[f] * per_unit[j]), "t": float(t[f]), "p": float(p[f]),
                         "std_effect": float(std[f]), "partial_r": float(partial[f]), "n": n, "df": int(df)})
    return pd.DataFrame(rows, columns=["feature", "term", "coef", "se", "t", "p", "std_effect", "partial_r",
                                       "n", "df"])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def effect_size_agreement(after: pd.DataFrame, before: pd.DataFrame | None = None,
                          truth: pd.DataFrame | None = None, value: str = "std_effect") -> pd.DataFrame:
    """Agreement of per-feature effect sizes across features, term by term.

    Parameters
    ----------
    after : pandas.DataFrame
        :func:`effect_sizes` of the harmonized table.
    before : pandas.DataFrame, optional
        :func:`effect_sizes` of the raw table.
    truth : pandas.DataFrame, optional
        :func:`effect_sizes` of the ground-truth (site-free) table.
    value : str
        Column compared (``"std_effect"`` by default, or ``"coef"``, ``"t"``...).

    Returns
    -------
    pandas.DataFrame
        One row per term: ``term, n_features, r_vs_raw, mean_abs_diff_vs_raw, r_vs_truth,
        mean_abs_diff_vs_truth, mean_after`` (NaN where a reference is missing). ``r`` is the
        Pearson correlation across features; needs at least 3 features.
    """
    rows = []
    for term, group in after.groupby("term", sort=False):
        this = group.set_index("feature")[value]
        row = {"term": term, "n_features": int(len(this)), "value": value, "mean_after": float(this.mean())}
        for label, reference in (("raw", before), ("truth", truth)):
            if reference is None or term not in set(reference["term"]):
                row[f"r_vs_{label}"] = float("nan")
                row[f"mean_abs_diff_vs_{label}"] = float("nan")
                continue
            ref = reference[reference["term"] == term].set_index("feature")[value].reindex(this.index)
            row[f"r_vs_{label}"] = _pearson(this.to_numpy(), ref.to_numpy())
            row[f"mean_abs_diff_vs_{label}"] = float(np.nanmean(np.abs(this.to_numpy() - ref.to_numpy())))
        rows.append(row)
    return pd.DataFrame(rows, columns=["term", "n_features", "value", "r_vs_raw", "mean_abs_diff_vs_raw",
                                       "r_vs_truth", "mean_abs_diff_vs_truth", "mean_after"])
