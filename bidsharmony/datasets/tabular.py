"""Synthetic multi-site ROI-volume tables with known truth, for tests and benchmarks.

:func:`make_feature_table` simulates what a multi-site study measures: ROI volumes (mm³) that
depend on age (non-linearly), sex and a hidden diagnosis, seen through each site's scanner.
Because the generating process is known, every row comes with

* its **site-free truth** (the volumes before any site effect), and
* its **reference-site truth** (the same brain as the reference site would measure it),

so a harmonizer can be scored by how close it maps each row to the reference-site truth.

Generative model (log volumes; ``j`` feature, ``i`` scan)::

    m_j(age, sex) = mu_j + h_j(age) + beta_j * sex              # population mean (non-linear age)
    z_ij  = (delta_j * dx_i + u_ij + eta_ij) / sigma_j          # standardised individual residual
    u_i   ~ N(0, Sigma)  (shared head-size factor, rho = 0.4)   # subject biology
    eta_ij ~ N(0, (scan_noise * sigma_j)^2)                     # scan-level variation, part of truth
    site-free truth:  log v_ij = m_j + sigma_j * z_ij

A site ``t`` measures ``log x_ij = m_j + sigma_j * g_tj(z_ij) [+ covariance noise]`` with the
monotone map ::

    g_tj(z) = gamma_tj + exp(lambda_tj) * z                                 # ComBat-shaped
              + kappa_tj * (log(2 cosh(z/2)) - log 2)                       # skew
              + omega_tj * (tanh(z) - 0.6 z)                                # tails/kurtosis

``gamma`` (additive) and ``lambda`` (multiplicative) are what ComBat models; ``kappa`` and
``omega`` are a non-linear distortion ComBat cannot undo (``nonlinear_effect=0`` removes it).
Per-feature ``lambda`` changes the sites' covariance matrices; ``covariance_effect > 0`` adds a
site-specific shared noise factor per scan (un-recoverable; not part of either truth). The
reference site has its own map too; its truth is ``m + sigma * g_ref(z)``. Sites cover
different, overlapping age ranges; traveling subjects are scanned at every site.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

_NONLINEAR_SLOPE = 0.6  # the linear part removed from tanh so omega adds shape, not scale


@dataclass
class FeatureTable:
    """A synthetic table and its truth.

    Attributes
    ----------
    features : pandas.DataFrame
        Observed ROI volumes (mm³), one row per scan.
    covariates : pandas.DataFrame
        ``site``, ``age`` (years), ``sex`` (``"M"``/``"F"``), same index.
    hidden : pandas.DataFrame
        ``subject_id``, ``diagnosis`` (0/1, unobserved by harmonizers), ``traveling``.
    truth_site_free : pandas.DataFrame
        Volumes before any site effect.
    truth_reference : pandas.DataFrame
        Each row as the reference site would measure it (the harmonization target).
    reference_site : str
    sites : list of str
    parameters : dict
        The generating parameters (arrays), for inspection.
    """

    features: pd.DataFrame
    covariates: pd.DataFrame
    hidden: pd.DataFrame
    truth_site_free: pd.DataFrame
    truth_reference: pd.DataFrame
    reference_site: str
    sites: list
    parameters: dict = field(default_factory=dict)

    def rows(self, mask) -> "FeatureTable":
        """The same table restricted to the rows selected by a boolean mask or index."""
        index = self.features.index[mask] if not isinstance(mask, pd.Index) else mask
        return FeatureTable(
            features=self.features.loc[index], covariates=self.covariates.loc[index],
            hidden=self.hidden.loc[index], truth_site_free=self.truth_site_free.loc[index],
            truth_reference=self.truth_reference.loc[index], reference_site=self.reference_site,
            sites=self.sites, parameters=self.parameters,
        )


def site_names(n_sites: int) -> list:
    """``["siteA", "siteB", ...]`` (``site27``... beyond 26)."""
    letters = string.ascii_uppercase
    return [f"site{letters[k]}" if k < 26 else f"site{k + 1}" for k in range(n_sites)]


def default_age_ranges(n_sites: int) -> list:
    """Reference site (first) 25-85 years; the others 35-year windows spread over 20-90."""
    ranges = [(25.0, 85.0)]
    others = n_sites - 1
    for k in range(others):
        start = 20.0 + (35.0 * k / max(others - 1, 1) if others > 1 else 17.5)
        ranges.append((start, start + 35.0))
    return ranges


def site_distortion(z: np.ndarray, gamma, log_scale, kappa, omega) -> np.ndarray:
    """The site map ``g(z)`` of the module docstring (vectorised over features)."""
    return (gamma + np.exp(log_scale) * z
            + kappa * (np.logaddexp(z / 2.0, -z / 2.0) - np.log(2.0))
            + omega * (np.tanh(z) - _NONLINEAR_SLOPE * z))


def make_feature_table(n_per_site=100, n_sites: int = 3, n_features: int = 8, seed: int = 0, *,
                       additive_effect: float = 0.6, multiplicative_effect: float = 0.25,
                       nonlinear_effect: float = 0.5, covariance_effect: float = 0.0,
                       age_ranges=None, traveling_subjects: int = 0, traveling_age_range=None,
                       diagnosis_prevalence: float = 0.3, diagnosis_effect: float = 0.8,
                       scan_noise: float = 0.05, reference_site: str | None = None) -> FeatureTable:
    """Simulate a multi-site ROI-volume table with known truth.

    Parameters
    ----------
    n_per_site : int or sequence of int
        Scans per site (traveling subjects come on top).
    n_sites : int
        Number of sites; the first is the reference unless ``reference_site`` says otherwise.
    n_features : int
        Number of ROI volumes.
    seed : int
        Seed of everything random here.
    additive_effect : float
        SD of the per-site, per-feature shift ``gamma`` (in residual SD units).
    multiplicative_effect : float
        SD of ``lambda`` (the log residual scale), per site and feature.
    nonlinear_effect : float
        Magnitude of the skew/tail distortion (``kappa``, ``omega``); 0 gives pure ComBat-shaped
        site effects. Capped per site and feature so every map stays monotone (slope >= 0.2).
    covariance_effect : float
        SD (residual units) of a site-specific shared noise factor added per scan at
        non-reference sites; changes the covariance, cannot be undone by anyone.
    age_ranges : sequence of (low, high), optional
        Uniform age range per site (default :func:`default_age_ranges`).
    traveling_subjects : int
        Subjects scanned once at every site (same biology, fresh scan noise).
    traveling_age_range : (low, high), optional
        Their ages; default: the ages every site covers, or 45-65 if none.
    diagnosis_prevalence, diagnosis_effect : float
        Hidden diagnosis: prevalence (same at every site) and its effect on half the ROIs
        (residual SD units, negative = atrophy).
    scan_noise : float
        Scan-level variation (residual SD units), part of the truth.
    reference_site : str, optional
        Which site is the reference (default the first).

    Returns
    -------
    FeatureTable
    """
    rng = np.random.default_rng(seed)
    sites = site_names(n_sites)
    reference = sites[0] if reference_site is None else str(reference_site)
    if reference not in sites:
        raise ValueError(f"reference_site {reference!r} is not one of {sites}")
    counts = [int(n_per_site)] * n_sites if np.isscalar(n_per_site) else [int(n) for n in n_per_site]
    if len(counts) != n_sites:
        raise ValueError("n_per_site must be an int or one count per site")
    ranges = default_age_ranges(n_sites) if age_ranges is None else [tuple(map(float, r)) for r in age_ranges]

    # ---- population (site-free) model
    mu = rng.uniform(np.log(300.0), np.log(20000.0), n_features)
    sigma = rng.uniform(0.08, 0.14, n_features)
    expanding = rng.random(n_features) < 0.2  # ventricle-like ROIs grow with age
    age_curvature = np.where(expanding, rng.uniform(0.3, 0.6, n_features), -rng.uniform(0.05, 0.25, n_features))
    sex_effect = rng.normal(0.08, 0.02, n_features)
    affected = rng.random(n_features) < 0.5
    dx_shift = np.where(affected, -diagnosis_effect * sigma, 0.0)
    rho = 0.4
    correlation = rho * np.ones((n_features, n_features)) + (1 - rho) * np.eye(n_features)
    chol = np.linalg.cholesky(correlation * np.outer(sigma, sigma))

    def population_mean(age, sex):
        years = (age[:, None] - 20.0) / 70.0
        return mu + age_curvature * years ** 2 + sex_effect * sex[:, None]

    # ---- site maps
    gamma = rng.normal(0.0, additive_effect, (n_sites, n_features))
    log_scale = rng.normal(0.0, multiplicative_effect, (n_sites, n_features))
    site_sign = rng.choice([-1.0, 1.0], (n_sites, 2))
    kappa = nonlinear_effect * site_sign[:, :1] * rng.uniform(0.6, 1.4, (n_sites, n_features))
    omega = nonlinear_effect * site_sign[:, 1:] * rng.uniform(0.6, 1.4, (n_sites, n_features))
    # g'(z) >= exp(lambda) - |kappa|/2 - 0.6 |omega|: shrink the distortion where needed so that
    # every site map stays monotone with slope >= 0.2 (a site must not merge distinct brains).
    budget = np.exp(log_scale) - 0.2
    used = np.abs(kappa) / 2 + np.abs(omega) * _NONLINEAR_SLOPE
    shrink = np.minimum(1.0, budget / np.maximum(used, 1e-12))
    kappa, omega = kappa * shrink, omega * shrink
    loadings = rng.normal(0.0, 1.0, (n_sites, n_features))
    site_index_of = {s: k for k, s in enumerate(sites)}

    # ---- subjects and scans
    records = []
    for k, site in enumerate(sites):
        for i in range(counts[k]):
            records.append({"subject_id": f"sub-{site}{i + 1:04d}", "site": site, "traveling": False,
                            "age": rng.uniform(*ranges[k]), "sex": float(rng.random() < 0.5),
                            "diagnosis": float(rng.random() < diagnosis_prevalence),
                            "biology": chol @ rng.normal(size=n_features)})
    if traveling_subjects:
        if traveling_age_range is None:
            low, high = max(r[0] for r in ranges), min(r[1] for r in ranges)
            traveling_age_range = (low, high) if high - low >= 5 else (45.0, 65.0)
        for i in range(int(traveling_subjects)):
            person = {"subject_id": f"sub-trav{i + 1:03d}", "traveling": True,
                      "age": rng.uniform(*traveling_age_range), "sex": float(rng.random() < 0.5),
                      "diagnosis": float(rng.random() < diagnosis_prevalence),
                      "biology": chol @ rng.normal(size=n_features)}
            for site in sites:
                records.append({**person, "site": site})
    n_rows = len(records)
    site = np.array([r["site"] for r in records], dtype=object)
    site_idx = np.array([site_index_of[s] for s in site])
    age = np.array([r["age"] for r in records])
    sex = np.array([r["sex"] for r in records])
    dx = np.array([r["diagnosis"] for r in records])
    biology = np.stack([r["biology"] for r in records])
    noise = rng.normal(0.0, 1.0, (n_rows, n_features)) * scan_noise * sigma

    mean = population_mean(age, sex)
    z = (dx[:, None] * dx_shift + biology + noise) / sigma
    site_free = mean + sigma * z
    observed = mean + sigma * site_distortion(z, gamma[site_idx], log_scale[site_idx],
                                              kappa[site_idx], omega[site_idx])
    if covariance_effect:
        factor = rng.normal(0.0, covariance_effect, (n_rows, 1))
        not_reference = (site != reference)[:, None]
        observed = observed + not_reference * sigma * factor * loadings[site_idx]
    r = site_index_of[reference]
    at_reference = mean + sigma * site_distortion(z, gamma[r], log_scale[r], kappa[r], omega[r])

    index = pd.Index([f"{rec['subject_id']}_{rec['site']}" if rec["traveling"] else rec["subject_id"]
                      for rec in records], name="scan_id")
    columns = [f"roi-{j + 1:03d}" for j in range(n_features)]

    def frame(log_values):
        return pd.DataFrame(np.exp(log_values), index=index, columns=columns)

    covariates = pd.DataFrame({"site": site.astype(str), "age": age,
                               "sex": np.where(sex == 1.0, "M", "F")}, index=index)
    hidden = pd.DataFrame({"subject_id": [r["subject_id"] for r in records], "diagnosis": dx.astype(int),
                           "traveling": [r["traveling"] for r in records]}, index=index)
    parameters = {"mu": mu, "sigma": sigma, "age_curvature": age_curvature, "sex_effect": sex_effect,
                  "diagnosis_shift": dx_shift, "gamma": gamma, "log_scale": log_scale, "kappa": kappa,
                  "omega": omega, "age_ranges": ranges, "covariance_loadings": loadings}
    return FeatureTable(features=frame(observed), covariates=covariates, hidden=hidden,
                        truth_site_free=frame(site_free), truth_reference=frame(at_reference),
                        reference_site=reference, sites=sites, parameters=parameters)


# ------------------------------------------------------------------------------ scoring
def make_age_spread_table(n_per_site: int = 150, n_features: int = 6, seed: int = 0, *,
                          spread_per_year=(0.015, 0.025)) -> FeatureTable:
    """Log-volumes whose spread grows with age, at sites that scanned different ages.

    Three sites (``siteA`` 20-80 years, the reference with no scanner effect; ``siteB`` 20-50;
    ``siteC`` 50-85), each scanner shifting the log-volumes by its own location and scaling
    their deviations by its own factor. The SD of each feature's log-volume is 0.05 at age 50
    and changes by ``exp(spread * (age - 50))``: a site that scanned older people looks
    noisier without any scanner effect. The test case of ComBat-LS.

    Parameters
    ----------
    n_per_site, n_features, seed : int
    spread_per_year : (float, float)
        Range of the per-feature log-SD slopes (per year); ``(0, 0)`` gives a constant spread.

    Returns
    -------
    FeatureTable
        ``truth_reference`` is each scan without its scanner effect; ``parameters`` holds
        ``spread_per_year`` (per feature), ``location`` and ``scale`` (per site).
    """
    rng = np.random.default_rng(seed)
    age_ranges = {"siteA": (20, 80), "siteB": (20, 50), "siteC": (50, 85)}
    base = rng.uniform(7, 9, n_features)
    slope = rng.uniform(-0.006, -0.002, n_features)
    spread = rng.uniform(*spread_per_year, n_features)
    location = {"siteA": np.zeros(n_features), "siteB": rng.normal(0, 0.1, n_features),
                "siteC": rng.normal(0, 0.1, n_features)}
    scale = {"siteA": np.ones(n_features), "siteB": rng.uniform(0.7, 1.4, n_features),
             "siteC": rng.uniform(0.7, 1.4, n_features)}
    rows, observed, truth = [], [], []
    for site, (low, high) in age_ranges.items():
        age, sex = rng.uniform(low, high, n_per_site), rng.integers(0, 2, n_per_site)
        noise = rng.standard_normal((n_per_site, n_features)) * 0.05 * np.exp(spread * (age[:, None] - 50))
        mean = base + slope * (age[:, None] - 50) + 0.03 * sex[:, None]
        truth.append(np.exp(mean + noise))
        observed.append(np.exp(mean + location[site] + scale[site] * noise))
        rows += [{"site": site, "age": a, "sex": "M" if s else "F"} for a, s in zip(age, sex)]
    index = pd.Index([f"sub-{i:04d}" for i in range(len(rows))], name="participant_id")
    columns = [f"roi{i}" for i in range(n_features)]
    truth_frame = pd.DataFrame(np.vstack(truth), index, columns)
    hidden = pd.DataFrame({"subject_id": index, "diagnosis": 0, "traveling": False}, index=index)
    return FeatureTable(
        features=pd.DataFrame(np.vstack(observed), index, columns), covariates=pd.DataFrame(rows, index=index),
        hidden=hidden, truth_site_free=truth_frame, truth_reference=truth_frame.copy(), reference_site="siteA",
        sites=list(age_ranges), parameters={"spread_per_year": spread, "location": location, "scale": scale},
    )


def error_to_reference(harmonized: pd.DataFrame, truth_reference: pd.DataFrame, rows=None) -> float:
    """Mean absolute percentage error of ``harmonized`` against the reference-site truth.

    Parameters
    ----------
    harmonized, truth_reference : pandas.DataFrame
        Same index and columns.
    rows : boolean array, optional
        Restrict to these rows (e.g. the non-reference sites).
    """
    truth = truth_reference.loc[harmonized.index, harmonized.columns].to_numpy()
    values = harmonized.to_numpy()
    error = np.abs(values - truth) / np.abs(truth)
    if rows is not None:
        error = error[np.asarray(rows)]
    return float(100.0 * error.mean())


def residualize(features: pd.DataFrame, covariates: pd.DataFrame) -> np.ndarray:
    """Log features minus a pooled fit of sex and a cubic spline of age (least squares)."""
    from sklearn.preprocessing import SplineTransformer

    values = np.log(np.clip(features.to_numpy(dtype=np.float64), 1e-9, None))
    age = covariates["age"].to_numpy(dtype=np.float64)[:, None]
    sex = (covariates["sex"].astype(str).str.upper().str[0] == "M").to_numpy(dtype=np.float64)
    basis = SplineTransformer(n_knots=5, degree=3).fit_transform(age)
    design = np.column_stack([basis, sex])
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    return values - design @ coef


def site_prediction_accuracy(features: pd.DataFrame, covariates: pd.DataFrame, seed: int = 0,
                             folds: int = 5) -> float:
    """Cross-validated balanced accuracy of predicting ``site`` from the features.

    Features are log-transformed and freed of age/sex effects first (:func:`residualize`), so
    that sites with different age ranges are not told apart by age alone; chance level is
    ``1 / n_sites``. Multinomial logistic regression, stratified ``folds``-fold CV.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    residuals = residualize(features, covariates)
    labels = covariates["site"].astype(str).to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    predicted = cross_val_predict(model, residuals, labels, cv=split)
    return float(balanced_accuracy_score(labels, predicted))
