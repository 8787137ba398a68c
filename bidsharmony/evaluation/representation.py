"""The evaluation measures of Lokhande et al. (2022, §4 and Appendix A.2) for representations.

Representations are what :class:`~bidsharmony.features.pooling.EquivariantPooling` returns
instead of harmonized features; the measures live here, beside the other metrics, so that no
harmonizer imports the evaluation suite.

* **ΔEq** (Eq. 8, higher = more structured by age): mean over pairs of scans of
  ``|i - j| · ||v_i - v_j||²`` with ``i, j`` their age groups and ``v`` the row-wise min–max
  normalised (Eq. 10) ``τ(ℓ)`` — or the representation, for models without τ;
* **Adv** (lower = more site-invariant, chance ``1/k``): a three-layer fully connected
  adversary (the evaluation suite's MLP, 64-64 hidden units, 150 epochs, standardised inputs;
  the paper's adversary also has batch normalisation) trained to predict the site from the
  training rows' representations, scored on held-out rows (balanced accuracy);
* **M** (lower = more site-invariant): MMD² between the sites' held-out representations
  (Eq. 10-normalised, unbiased estimator, RBF kernel with the median heuristic), averaged over
  pairs of sites — :func:`bidsharmony.evaluation.mmd2_unbiased`;
* **ACC**: accuracy of the model's own predictor ``h`` on held-out rows.

``…|age`` variants remove a cubic spline of age (fitted on the training rows,
:func:`bidsharmony.evaluation.site.residualize_covariates`) from the representation first: the
site information left once age is accounted for. Sites whose age ranges differ *should* stay
distinguishable through age in an age-equivariant representation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..harmonize.validation import MALE, normalize_sex, site_labels, stripped_labels
from .distance import median_heuristic, mmd2_unbiased, subsample_by_site
from .prediction import MLPClassifier
from .site import chance_levels, residualize_covariates

__all__ = ["equivariance_gap", "evaluate_representation", "minmax_normalize", "remove_age", "site_adversary",
           "site_mmd"]

ADVERSARY_HIDDEN = (64, 64)
ADVERSARY_EPOCHS = 150


def minmax_normalize(values) -> np.ndarray:
    """Eq. 10: each row ``z`` to ``(z - min z) / (max z - min z)`` (flattened per row)."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    low = values.min(axis=1, keepdims=True)
    span = values.max(axis=1, keepdims=True) - low
    return (values - low) / np.where(span > 0, span, 1.0)


def equivariance_gap(values, groups, *, max_rows: int = 1000, seed: int = 0) -> float:
    """ΔEq (Eq. 8): mean over all pairs of ``|i - j| · ||ṽ_i - ṽ_j||²`` (ṽ: Eq. 10-normalised rows).

    Parameters
    ----------
    values : array-like
        ``(n_rows, ...)`` — ``τ(ℓ)`` matrices or representations (flattened per row).
    groups : array-like
        Age-group index of each row.
    max_rows : int
        Random subsample (seeded) bounding the quadratic cost.
    """
    v = minmax_normalize(values)
    groups = np.asarray(groups, dtype=np.float64)
    if len(v) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(len(v), size=max_rows, replace=False))
        v, groups = v[rows], groups[rows]
    sq = (v ** 2).sum(1)[:, None] + (v ** 2).sum(1)[None, :] - 2.0 * v @ v.T
    weights = np.abs(groups[:, None] - groups[None, :])
    upper = np.triu_indices(len(v), k=1)
    return float((weights * np.maximum(sq, 0.0))[upper].mean())


def site_mmd(values, sites, *, normalize: bool = True, max_per_site: int = 500, seed: int = 0) -> float:
    """M: mean over pairs of sites of the unbiased MMD² (median-heuristic RBF) of the rows."""
    v = minmax_normalize(values) if normalize else np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    sites = np.asarray(sites).astype(str)
    labels = sorted(set(sites))
    samples = subsample_by_site(v, sites, labels, max_per_site, np.random.default_rng(seed))
    scores = []
    for a_index, a in enumerate(labels):
        for b in labels[a_index + 1:]:
            if len(samples[a]) >= 2 and len(samples[b]) >= 2:
                sigma = median_heuristic(samples[a], samples[b])
                scores.append(mmd2_unbiased(samples[a], samples[b], sigma))
    return float(np.mean(scores)) if scores else float("nan")


def site_adversary(train_values, train_sites, test_values, test_sites, *, hidden=ADVERSARY_HIDDEN,
                   epochs: int = ADVERSARY_EPOCHS, seed: int = 0, n_threads: int = 1) -> dict:
    """Adv: an MLP adversary trained on the training rows, scored on the held-out rows.

    Returns
    -------
    dict
        ``balanced_accuracy``, ``accuracy`` and the chance levels of
        :func:`bidsharmony.evaluation.chance_levels` for the held-out sites.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    train = np.asarray(train_values, dtype=np.float64).reshape(len(train_values), -1)
    test = np.asarray(test_values, dtype=np.float64).reshape(len(test_values), -1)
    train_sites = np.asarray(train_sites).astype(str)
    test_sites = np.asarray(test_sites).astype(str)
    model = MLPClassifier(hidden=hidden, epochs=epochs, random_state=seed, n_threads=n_threads)
    model.fit(train, train_sites)
    predicted = np.asarray(model.predict(test)).astype(str)
    return {"balanced_accuracy": float(balanced_accuracy_score(test_sites, predicted)),
            "accuracy": float(accuracy_score(test_sites, predicted)), **chance_levels(test_sites)}


def remove_age(train_values, train_covariates: pd.DataFrame, test_values, test_covariates: pd.DataFrame):
    """Residuals of a cubic spline of age fitted on the training rows (both sides)."""
    train = np.asarray(train_values, dtype=np.float64).reshape(len(train_values), -1)
    test = np.asarray(test_values, dtype=np.float64).reshape(len(test_values), -1)
    return residualize_covariates(train, train_covariates, test, test_covariates, adjust_for=("age",))


def evaluate_representation(model, train_features: pd.DataFrame, train_covariates: pd.DataFrame,
                            test_features: pd.DataFrame, test_covariates: pd.DataFrame, *,
                            target_column: str | None = None, seed: int = 0, adversary_epochs: int = ADVERSARY_EPOCHS,
                            n_threads: int = 1) -> dict:
    """ΔEq, Adv, M and ACC of a fitted :class:`~.harmonizer.EquivariantPooling` (any variant).

    Parameters
    ----------
    model : EquivariantPooling
        Fitted on the training rows.
    train_features, train_covariates, test_features, test_covariates : pandas.DataFrame
        Training rows (the adversary is trained on their representations) and held-out rows
        (everything is scored on them).
    target_column : str, optional
        Covariate holding the true target for ACC (default: the model's ``target``).

    Returns
    -------
    dict
        ``delta_eq`` (on τ for the equivariant variant, else on the representation),
        ``delta_eq_phi`` (on the representation), ``adv`` / ``adv_accuracy`` / ``adv_chance``,
        ``adv_given_age``, ``mmd``, ``mmd_given_age``, ``acc`` (NaN without a target).
    """
    z_train = model.transform(train_features, train_covariates).to_numpy()
    z_test = model.transform(test_features, test_covariates).to_numpy()
    groups = model.age_bins(test_covariates["age"].to_numpy(dtype=np.float64))
    train_sites, test_sites = site_labels(train_covariates), site_labels(test_covariates)
    result = {"delta_eq_phi": equivariance_gap(z_test, groups, seed=seed)}
    if model.variant == "equivariant":
        result["delta_eq"] = equivariance_gap(model.rotations(test_features, test_covariates), groups, seed=seed)
    else:
        result["delta_eq"] = result["delta_eq_phi"]
    adversary = site_adversary(z_train, train_sites, z_test, test_sites, epochs=adversary_epochs, seed=seed,
                               n_threads=n_threads)
    result.update(adv=adversary["balanced_accuracy"], adv_accuracy=adversary["accuracy"],
                  adv_chance=adversary["chance"])
    r_train, r_test = remove_age(z_train, train_covariates, z_test, test_covariates)
    result["adv_given_age"] = site_adversary(r_train, train_sites, r_test, test_sites, epochs=adversary_epochs,
                                             seed=seed, n_threads=n_threads)["balanced_accuracy"]
    result["mmd"] = site_mmd(z_test, test_sites, seed=seed)
    result["mmd_given_age"] = site_mmd(r_test, test_sites, normalize=False, seed=seed)
    result["acc"] = float("nan")
    column = target_column or model.target
    if model.target_info_.get("kind") == "classification" and column is not None:
        predicted = model.predict(test_features, test_covariates).to_numpy().astype(str)
        if column == "age-bin":
            truth = model.age_bins(test_covariates["age"].to_numpy(dtype=np.float64)).astype(str)
        elif column == "sex":  # read as the model read it at fit (its resolved coding)
            truth = np.where(normalize_sex(test_covariates["sex"], model.sex_coding_) == MALE, "M", "F")
        else:
            truth = stripped_labels(test_covariates[column]).to_numpy()
        result["acc"] = float(np.mean(predicted == truth))
    return result
