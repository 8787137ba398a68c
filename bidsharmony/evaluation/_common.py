"""Shared plumbing of the evaluation suite: input checks, participant groups, folds, harmonizers.

Nothing here computes a metric; it makes sure every metric sees the same validated tables,
the same participant-grouped folds and the same way of building a fresh harmonizer.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputDataError, UsageError
from ..harmonize import get_harmonizer
# labels and sex codes are read as the harmonizers read them: one implementation, below both
from ..harmonize.validation import AGE, SEX, SITE, sex_numeric, site_labels

#: covariate columns tried, in order, as the participant identifier when ``groups="auto"``
GROUP_COLUMNS = ("participant_id", "subject_id", "subject", "participant")


class EvaluationError(InputDataError):
    """The tables given to an evaluation cannot be used as they are."""


class EvaluationUsageError(UsageError):
    """An evaluation was asked for with inconsistent parameters."""


# ------------------------------------------------------------------------------ tables
def check_tables(features: pd.DataFrame, covariates: pd.DataFrame, *,
                 require: Sequence[str] = (SITE,)) -> np.ndarray:
    """Validate the feature/covariate pair and return the features as float64.

    Parameters
    ----------
    features : pandas.DataFrame
        One row per scan, numeric finite columns.
    covariates : pandas.DataFrame
        Same index, holding at least the columns in ``require``.
    require : sequence of str
        Covariate columns that must be present and complete.

    Returns
    -------
    numpy.ndarray
        ``(n_rows, n_features)`` float64 copy of ``features``.
    """
    if not isinstance(features, pd.DataFrame) or not isinstance(covariates, pd.DataFrame):
        raise EvaluationError("features and covariates must both be pandas DataFrames")
    if len(features) == 0 or features.shape[1] == 0:
        raise EvaluationError("the feature table is empty")
    if features.index.duplicated().any():
        raise EvaluationError("the feature table has duplicated row labels; give every scan its own label")
    if not features.index.equals(covariates.index):
        raise EvaluationError("features and covariates must have the same index (same rows, same "
                              "order); align them with covariates.loc[features.index]")
    missing = [c for c in require if c not in covariates.columns]
    if missing:
        raise EvaluationError(f"covariate column(s) {', '.join(missing)} missing "
                              f"(found {', '.join(map(str, covariates.columns))})")
    for column in require:
        if covariates[column].isna().any():
            raise EvaluationError(f"covariate {column!r} has missing values; fill them in or drop those rows")
    try:
        values = features.to_numpy(dtype=np.float64, copy=True)
    except (TypeError, ValueError):
        raise EvaluationError("features must be numeric; move identifiers and covariates to the "
                              "covariate table") from None
    if not np.isfinite(values).all():
        raise EvaluationError("the feature table holds NaN or infinite values; impute or drop those rows")
    return values


def group_labels(covariates: pd.DataFrame, groups="auto") -> np.ndarray:
    """Participant identifier of each row, so that folds never split a participant.

    Parameters
    ----------
    covariates : pandas.DataFrame
    groups : "auto", str, array-like or None
        ``"auto"`` takes the first of :data:`GROUP_COLUMNS` present, else treats every row as
        its own participant. A string names a covariate column (it must exist). An array gives
        the labels directly. ``None`` makes every row its own group.

    Returns
    -------
    numpy.ndarray of str
    """
    if groups is None:
        return np.asarray([f"row-{i}" for i in range(len(covariates))], dtype=object)
    if isinstance(groups, str):
        if groups == "auto":
            for column in GROUP_COLUMNS:
                if column in covariates.columns:
                    return group_labels(covariates, column)
            return group_labels(covariates, None)
        if groups not in covariates.columns:
            raise EvaluationError(f"group column {groups!r} is not a covariate column "
                                  f"(found {', '.join(map(str, covariates.columns))})")
        labels = covariates[groups]
        if labels.isna().any():
            raise EvaluationError(f"participant column {groups!r} has missing values")
        return labels.astype(str).to_numpy(dtype=object)
    labels = np.asarray(groups).astype(str).astype(object)
    if labels.shape != (len(covariates),):
        raise EvaluationError(f"groups has {labels.size} labels for {len(covariates)} rows")
    return labels


def site_table(covariates: pd.DataFrame, groups="auto", diagnosis_column: str | None = "diagnosis") -> pd.DataFrame:
    """One row per site: scans, participants, age range and sex counts (for reports)."""
    sites = site_labels(covariates)
    group = group_labels(covariates, groups)
    rows = []
    age = pd.to_numeric(covariates[AGE], errors="coerce") if AGE in covariates else None
    sex = sex_numeric(covariates[SEX]) if SEX in covariates else None
    for site in sorted(set(sites)):
        mask = sites == site
        row = {"site": site, "n_scans": int(mask.sum()), "n_participants": int(len(set(group[mask])))}
        if age is not None:
            a = age[mask]
            row.update(age_min=float(a.min()), age_max=float(a.max()), age_mean=float(a.mean()),
                       age_sd=float(a.std(ddof=1)) if mask.sum() > 1 else float("nan"))
        if sex is not None:
            row.update(n_female=int((sex[mask] == 0).sum()), n_male=int((sex[mask] == 1).sum()))
        if diagnosis_column and diagnosis_column in covariates:
            counts = covariates.loc[mask, diagnosis_column].astype(str).value_counts().sort_index()
            row["diagnosis_counts"] = ", ".join(f"{k}: {v}" for k, v in counts.items())
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------- folds
@dataclass(frozen=True)
class Fold:
    """One train/test split, as positional row numbers."""

    index: int
    train: np.ndarray
    test: np.ndarray


def make_folds(covariates: pd.DataFrame, n_splits: int = 5, *, groups="auto", stratify: str | None = SITE,
               seed: int = 0) -> list[Fold]:
    """Participant-grouped, site-stratified K-fold splits.

    All scans of a participant (e.g. a traveling subject scanned at every site) fall in the
    same fold, so no participant is ever on both the training and the test side. Folds are
    stratified by ``stratify`` (site by default) with :class:`sklearn.model_selection.StratifiedGroupKFold`
    so every site appears in every training and test fold.

    Parameters
    ----------
    covariates : pandas.DataFrame
    n_splits : int
        Number of folds (>= 2).
    groups : "auto", str, array-like or None
        See :func:`group_labels`.
    stratify : str or None
        Covariate to stratify on; ``None`` uses plain :class:`~sklearn.model_selection.GroupKFold`.
    seed : int
        Shuffling seed.

    Returns
    -------
    list of Fold

    Raises
    ------
    EvaluationError
        When a site has fewer participants than folds, or a training fold misses a site.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise EvaluationUsageError(f"n_splits must be an integer >= 2, got {n_splits!r}")
    group = group_labels(covariates, groups)
    n_groups = len(set(group))
    if n_groups < n_splits:
        raise EvaluationError(f"only {n_groups} participants for {n_splits} folds; lower n_splits")
    dummy = np.zeros(len(covariates))
    if stratify is not None:
        strata = covariates[stratify].astype(str).to_numpy()
        if SITE in covariates:
            sites = site_labels(covariates)
            for site in sorted(set(sites)):
                n_site_groups = len(set(group[sites == site]))
                if n_site_groups < n_splits:
                    raise EvaluationError(
                        f"site {site!r} has {n_site_groups} participant(s), fewer than the "
                        f"{n_splits} folds: every site must appear in every fold; lower n_splits "
                        "or drop/merge the site")
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = splitter.split(dummy, strata, group)
    else:
        splitter = GroupKFold(n_splits=n_splits)
        # GroupKFold is deterministic; shuffle group identities to honour the seed
        rng = np.random.default_rng(seed)
        unique = np.array(sorted(set(group)), dtype=object)
        relabel = dict(zip(unique, rng.permutation(len(unique))))
        splits = splitter.split(dummy, dummy, np.array([relabel[g] for g in group]))
    folds = []
    for k, (train, test) in enumerate(splits):
        if set(group[train]) & set(group[test]):  # pragma: no cover - sklearn guarantees this
            raise AssertionError("a participant sits on both sides of a fold")
        folds.append(Fold(k, np.sort(train), np.sort(test)))
    if SITE in covariates:
        sites = site_labels(covariates)
        for fold in folds:
            absent = sorted(set(sites[fold.test]) - set(sites[fold.train]))
            if absent:
                raise EvaluationError(f"fold {fold.index}: site(s) {', '.join(absent)} have no training "
                                      "rows; lower n_splits")
    return folds


# -------------------------------------------------------------------------- harmonizers
class IdentityHarmonizer:
    """The "no harmonization" baseline: ``transform`` returns the features unchanged."""

    name = "none"

    def fit(self, features, covariates):
        return self

    def transform(self, features, covariates):
        return features.copy()


def _looks_like_harmonizer(obj) -> bool:
    return (not isinstance(obj, type)) and callable(getattr(obj, "fit", None)) \
        and callable(getattr(obj, "transform", None))


def _registry_factory(name: str) -> Callable:
    def factory():
        made = get_harmonizer(name)
        if isinstance(made, type):
            return made()
        if _looks_like_harmonizer(made):
            return copy.deepcopy(made)
        return made()

    return factory


def as_factory(spec) -> Callable | None:
    """Turn a harmonizer specification into a zero-argument factory (``None`` = identity).

    Accepted: ``None`` (no harmonization); a registered name (``"combat"``, resolved through
    :func:`bidsharmony.harmonize.get_harmonizer`); a class; an unfitted harmonizer instance
    (deep-copied for every fold, so folds never share a fitted state); or any zero-argument
    callable returning an object with ``fit(features, covariates)`` and
    ``transform(features, covariates)``.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec.strip().lower() in ("none", "raw"):
            return None
        return _registry_factory(spec)
    if _looks_like_harmonizer(spec):
        return lambda: copy.deepcopy(spec)
    if callable(spec):
        return spec
    raise EvaluationUsageError(f"cannot use {spec!r} as a harmonizer: give None, a name, a class, an "
                               "instance with fit/transform, or a zero-argument factory")


def new_harmonizer(factory: Callable | None):
    """Build a fresh harmonizer from ``factory`` and check its interface."""
    if factory is None:
        return IdentityHarmonizer()
    made = factory()
    if not _looks_like_harmonizer(made):
        raise EvaluationUsageError(f"the harmonizer factory returned {type(made).__name__}, which has no "
                                   "fit(features, covariates) / transform(features, covariates)")
    return made


def transform_frame(harmonizer, features: pd.DataFrame, covariates: pd.DataFrame) -> pd.DataFrame:
    """Call ``transform`` and return a finite DataFrame with the input's index and columns."""
    out = harmonizer.transform(features, covariates)
    if isinstance(out, pd.DataFrame):
        missing = [c for c in features.columns if c not in out.columns]
        if missing or len(out) != len(features):
            raise EvaluationError(f"{type(harmonizer).__name__}.transform returned a table whose rows or "
                                  "columns differ from its input")
        if out.index.equals(features.index):
            out = out.loc[:, list(features.columns)]
        elif not out.index.duplicated().any() and set(out.index) == set(features.index):
            out = out.loc[features.index, list(features.columns)]  # same rows, other order
        else:
            raise EvaluationError(f"{type(harmonizer).__name__}.transform returned rows labelled differently "
                                  "from its input; keep the input's index")
    else:
        values = np.asarray(out, dtype=np.float64)
        if values.shape != features.shape:
            raise EvaluationError(f"{type(harmonizer).__name__}.transform returned shape {values.shape}, "
                                  f"expected {features.shape}")
        out = pd.DataFrame(values, index=features.index, columns=features.columns)
    out = out.astype(np.float64)
    if not np.isfinite(out.to_numpy()).all():
        raise EvaluationError(f"{type(harmonizer).__name__}.transform returned NaN or infinite values")
    return out


def call_with_supported(func: Callable, **kwargs):
    """Call ``func`` with the keyword arguments its signature accepts."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return func()
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return func(**kwargs)
    return func(**{k: v for k, v in kwargs.items() if k in params})


# ------------------------------------------------------------------------------- seeds
def rng_seed(seed: int, *parts) -> int:
    """A reproducible 32-bit seed derived from ``seed`` and labels (fold, site, task...)."""
    text = "|".join(str(p) for p in (seed, *parts))
    value = 2166136261
    for char in text.encode():
        value = ((value ^ char) * 16777619) & 0xFFFFFFFF
    return value


def as_mapping(harmonizers) -> dict:
    """Accept a dict ``{name: spec}`` or a sequence of names."""
    if harmonizers is None:
        return {}
    if isinstance(harmonizers, Mapping):
        return {str(k): v for k, v in harmonizers.items()}
    if isinstance(harmonizers, str):
        harmonizers = [h for h in harmonizers.split(",") if h.strip()]
    return {str(h).strip(): str(h).strip() for h in harmonizers}
