"""Site predictability: can a classifier still tell the site from the features?

A classifier is trained to predict the site of each scan from its features, in
participant-grouped, site-stratified K-fold cross-validation (a traveling subject is never on
both sides). Its **balanced accuracy** (mean per-site recall) is reported next to the chance
level. Harmonization that removed the site signal brings it down to chance.

Covariates
----------
Sites often differ in age (or sex, diagnosis), and these change the features, so a classifier
could recognise a site through its age range even after a perfect harmonization. By default
the features are therefore first freed of age (cubic spline), sex and diagnosis effects —
fitted on the training rows of each fold only — and the classifier sees what is left
(``adjust_for=None`` turns this off).

Chance level
------------
Balanced accuracy has an analytic chance level of exactly ``1/k`` for ``k`` sites, whatever
the site sizes: a classifier that ignores the features (constant, majority-class or random
guesses) has expected mean per-class recall ``1/k``. No permutation test is needed. We also
report an approximate one-sided 95 % upper limit of chance, ``1/k + 1.645 * sqrt(sum_c
(1/k)(1 - 1/k) / n_c) / k`` (normal approximation of a classifier guessing uniformly at
random, ``n_c`` scans of site ``c``), and, for plain accuracy, the majority-site rate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import (
    EvaluationUsageError,
    check_tables,
    make_folds,
    rng_seed,
    site_labels,
)
from .prediction import make_predictor
from .protocols import FoldData, harmonize_in_folds

#: covariates removed from the features before site classification (when present)
DEFAULT_ADJUST = ("age", "sex", "diagnosis")

__all__ = ["DEFAULT_ADJUST", "residualize_covariates", "chance_levels", "site_predictability",
           "site_predictability_from_folds", "make_site_classifier"]


def chance_levels(sites) -> dict:
    """Analytic chance levels of site classification.

    Parameters
    ----------
    sites : array-like
        Site label of every scan scored.

    Returns
    -------
    dict
        ``chance`` (= 1/k, balanced accuracy), ``chance_upper95`` (approximate one-sided 95 %
        limit of balanced accuracy under chance, see module docstring), ``majority_rate``
        (chance level of plain accuracy) and ``n_sites``.
    """
    labels, counts = np.unique(np.asarray(sites).astype(str), return_counts=True)
    k = len(labels)
    if k < 2:
        raise EvaluationUsageError("site predictability needs at least two sites")
    p = 1.0 / k
    sd = np.sqrt(np.sum(p * (1 - p) / counts)) / k
    return {"chance": p, "chance_upper95": float(p + 1.645 * sd),
            "majority_rate": float(counts.max() / counts.sum()), "n_sites": int(k)}


def _covariate_columns(covariates: pd.DataFrame, adjust_for, diagnosis_column):
    names = []
    for term in adjust_for or ():
        column = diagnosis_column if term == "diagnosis" else term
        if column and column in covariates.columns:
            names.append((term, column))
    return names


def residualize_covariates(train_features: np.ndarray, train_covariates: pd.DataFrame, test_features: np.ndarray,
                           test_covariates: pd.DataFrame, adjust_for=DEFAULT_ADJUST,
                           diagnosis_column: str | None = "diagnosis") -> tuple[np.ndarray, np.ndarray]:
    """Remove covariate effects learnt on the training rows from both sides.

    Age enters as a cubic B-spline (4 knots, linear extrapolation), sex as 0/1 and diagnosis
    as dummies of the training levels; ordinary least squares on the training rows.

    Returns
    -------
    train_residuals, test_residuals : numpy.ndarray
    """
    from sklearn.preprocessing import SplineTransformer

    from ._common import sex_numeric

    columns = _covariate_columns(train_covariates, adjust_for, diagnosis_column)
    if not columns:
        return train_features, test_features

    def design(cov, fitted):
        parts = [np.ones((len(cov), 1))]
        for term, column in columns:
            if term == "age":
                age = pd.to_numeric(cov[column], errors="coerce").to_numpy(dtype=np.float64)[:, None]
                if "spline" not in fitted:
                    if np.ptp(age) <= 0:
                        continue
                    fitted["spline"] = SplineTransformer(n_knots=4, degree=3, extrapolation="linear",
                                                         include_bias=False).fit(age)
                parts.append(fitted["spline"].transform(age))
            elif term == "sex":
                parts.append(np.nan_to_num(sex_numeric(cov[column]), nan=0.5)[:, None])
            else:
                values = cov[column].astype(str).to_numpy()
                levels = fitted.setdefault(column, sorted(set(values))[1:])
                parts.append(np.column_stack([(values == level) for level in levels]).astype(np.float64)
                             if levels else np.zeros((len(cov), 0)))
        return np.column_stack(parts)

    fitted: dict = {}
    x_train = design(train_covariates, fitted)
    x_test = design(test_covariates, fitted)
    beta, *_ = np.linalg.lstsq(x_train, train_features, rcond=None)
    return train_features - x_train @ beta, test_features - x_test @ beta


def make_site_classifier(classifier="logistic", *, random_state: int = 0, mlp_epochs: int = 100,
                         n_threads: int | None = 1, mlp_params: dict | None = None):
    """Site classifier: ``"logistic"`` (default; standardised features, multinomial L2
    logistic regression), ``"mlp"`` (Table-5 MLP) or any scikit-learn classifier (cloned)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(classifier, str) and classifier.lower() == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    if isinstance(classifier, str) and classifier.lower() not in ("mlp",):
        raise EvaluationUsageError(f"unknown site classifier {classifier!r}; use 'logistic', 'mlp' "
                                   "or a scikit-learn classifier")
    return make_predictor(classifier, "classification", random_state=random_state, mlp_epochs=mlp_epochs,
                          n_threads=n_threads, mlp_params=mlp_params)


def site_predictability_from_folds(fold_data: list[FoldData], covariates: pd.DataFrame, *,
                                   method: str = "raw", classifier="logistic", seed: int = 0,
                                   adjust_for=DEFAULT_ADJUST, diagnosis_column: str | None = "diagnosis",
                                   mlp_epochs: int = 100, n_threads: int | None = 1,
                                   mlp_params: dict | None = None) -> tuple[dict, pd.DataFrame]:
    """Site classification on already-harmonized folds (covariates removed per fold, see
    :func:`residualize_covariates`).

    Returns
    -------
    summary : dict
        ``method, balanced_accuracy`` (pooled out-of-fold predictions), ``balanced_accuracy_mean``
        and ``_sd`` over folds, ``accuracy``, the chance levels of :func:`chance_levels`,
        ``n_scans, n_folds, classifier``.
    per_fold : pandas.DataFrame
        ``method, fold, balanced_accuracy, accuracy, n_train, n_test``.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    sites = site_labels(covariates).astype(str)
    predicted = np.empty(len(sites), dtype=object)
    seen = np.zeros(len(sites), dtype=bool)
    rows = []
    for fd in fold_data:
        model = make_site_classifier(classifier, random_state=rng_seed(seed, "site", fd.fold.index),
                                     mlp_epochs=mlp_epochs, n_threads=n_threads, mlp_params=mlp_params)
        x_train, x_test = residualize_covariates(
            fd.train.to_numpy(), covariates.iloc[fd.fold.train], fd.test.to_numpy(), covariates.iloc[fd.fold.test],
            adjust_for, diagnosis_column)
        model.fit(x_train, sites[fd.fold.train])
        pred = np.asarray(model.predict(x_test)).astype(str)
        truth = sites[fd.fold.test]
        predicted[fd.fold.test] = pred
        seen[fd.fold.test] = True
        rows.append({"method": method, "fold": fd.fold.index,
                     "balanced_accuracy": float(balanced_accuracy_score(truth, pred))
                     if len(set(truth)) > 1 else float("nan"),
                     "accuracy": float(accuracy_score(truth, pred)),
                     "n_train": int(len(fd.fold.train)), "n_test": int(len(fd.fold.test))})
    per_fold = pd.DataFrame(rows)
    truth = sites[seen]
    pred = predicted[seen].astype(str)
    summary = {
        "method": method,
        "balanced_accuracy": float(balanced_accuracy_score(truth, pred)),
        "balanced_accuracy_mean": float(per_fold["balanced_accuracy"].mean()),
        "balanced_accuracy_sd": float(per_fold["balanced_accuracy"].std()),
        "accuracy": float(accuracy_score(truth, pred)),
        **chance_levels(truth),
        "n_scans": int(seen.sum()),
        "n_folds": len(fold_data),
        "classifier": classifier if isinstance(classifier, str) else type(classifier).__name__,
        "adjusted_for": ",".join(t for t, _ in _covariate_columns(covariates, adjust_for, diagnosis_column)),
    }
    return summary, per_fold


def site_predictability(features: pd.DataFrame, covariates: pd.DataFrame, harmonizer=None, *,
                        classifier="logistic", adjust_for=DEFAULT_ADJUST,
                        diagnosis_column: str | None = "diagnosis", n_splits: int = 5, groups="auto",
                        seed: int = 0, folds=None, mlp_epochs: int = 100, n_threads: int | None = 1,
                        mlp_params: dict | None = None, return_folds: bool = False):
    """Cross-validated balanced accuracy of predicting the site from the features.

    Parameters
    ----------
    features, covariates : pandas.DataFrame
        Same index; covariates hold ``site`` (and what the harmonizer needs).
    harmonizer : None, name, class, instance or zero-argument factory
        When given, a fresh harmonizer is fitted on each training fold only and applied to
        the training and the test rows (leakage-safe); ``None`` scores the raw features.
    classifier : {"logistic", "mlp"} or scikit-learn classifier
        Default: multinomial logistic regression on standardised features.
    adjust_for : sequence of {"age", "sex", "diagnosis"} or None
        Covariate effects removed from the features (learnt on each training fold) before
        classifying, so a site is not recognised through its age range; ``None`` keeps them.
    diagnosis_column : str or None
    n_splits : int
        Folds; participants (``groups``) never straddle folds, sites are stratified.
    groups : "auto", str, array-like or None
        Participant identifiers (``"auto"``: the ``participant_id`` column when present).
    seed : int
        Fold shuffling and classifier seeds.
    folds : list of Fold, optional
        Precomputed folds (overrides ``n_splits``/``groups``).
    mlp_epochs, n_threads, mlp_params :
        Settings of the MLP classifier.
    return_folds : bool
        Also return the per-fold table.

    Returns
    -------
    dict (and pandas.DataFrame when ``return_folds``)
        See :func:`site_predictability_from_folds`. Compare ``balanced_accuracy`` with
        ``chance`` (= 1/k) and ``chance_upper95``.

    Examples
    --------
    >>> result = site_predictability(features, covariates)            # doctest: +SKIP
    >>> result["balanced_accuracy"], result["chance"]                  # doctest: +SKIP
    (0.97, 0.333)
    """
    check_tables(features, covariates)
    if folds is None:
        folds = make_folds(covariates, n_splits, groups=groups, seed=seed)
    fold_data = harmonize_in_folds(features, covariates, harmonizer, folds)
    summary, per_fold = site_predictability_from_folds(
        fold_data, covariates, method="raw" if harmonizer is None else "harmonized", classifier=classifier,
        seed=seed, adjust_for=adjust_for, diagnosis_column=diagnosis_column, mlp_epochs=mlp_epochs,
        n_threads=n_threads, mlp_params=mlp_params)
    return (summary, per_fold) if return_folds else summary
