"""ComBat-LS: ComBat whose covariates change a feature's variance as well as its mean.

ComBat standardises every feature with one pooled variance, so when the spread of a volume
grows with age, a site that scanned older people looks "noisier" and ComBat shrinks it: the
age-related variance is removed as if it were a scanner effect (Gardner et al., *ComBatLS:
a location- and scale-preserving method for multi-site image harmonization*, 2024/2025; there
it is fitted with R's GAMLSS). The model, per feature (on ``log(x)`` by default)::

    y = mu(C) + location[site] + sigma(C) * scale[site] * e,     log sigma(C)^2 linear in C

so the harmonized value keeps the covariates' effect on the spread and removes only the
site's::

    y' = mu0(C) + (y - mu0(C) - location*[site]) / scale*[site]

``C`` holds sex, age (linear) and any extra covariates; ``mu0`` is the mean at the reference
site (or the size-weighted average of the sites without one). The mean and log-variance models
are fitted together by Gaussian maximum likelihood (alternating weighted least squares and
Fisher scoring); ``location*`` and ``scale*`` are then estimated as in ComBat and shrunk across
features by its empirical Bayes step (Johnson et al. 2007), with one change: each scan's
residual is weighed by its covariates' ``sigma(C)``, so that a site that scanned older people
is not mistaken for a noisier scanner.
"""

from __future__ import annotations

import numpy as np

from ..utils.rowwise import row_products
from ..harmonize import validation
from .combat import ComBat
from ..harmonize.errors import CovariateError

#: E[log chi2_1]: log(e^2) underestimates log var(e) by this on average (the start value only)
_LOG_CHI2_MEAN = -1.2703628454614782


def _solve(design: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares coefficients of each target column; one weight column per target if given."""
    if weights is None:
        return np.linalg.lstsq(design, targets, rcond=None)[0]
    coefficients = np.empty((design.shape[1], targets.shape[1]))
    for g in range(targets.shape[1]):
        root = np.sqrt(weights[:, g])
        coefficients[:, g] = np.linalg.lstsq(design * root[:, None], targets[:, g] * root, rcond=None)[0]
    return coefficients


def fit_location_scale(design: np.ndarray, values: np.ndarray, *, alternations: int = 3,
                       max_iter: int = 50, tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian maximum likelihood of a mean and a log-variance linear in the same design.

    Parameters
    ----------
    design : numpy.ndarray
        ``(n, p)`` design, shared by every feature (intercept included).
    values : numpy.ndarray
        ``(n, g)`` features.
    alternations : int
        Rounds of (weighted mean fit, variance fit).
    max_iter, tol : int, float
        Fisher-scoring iterations of the log-variance model and their stopping rule (largest
        coefficient change).

    Returns
    -------
    mean_coefficients, log_variance_coefficients : numpy.ndarray
        ``(p, g)`` each.
    """
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise CovariateError("combat-ls: the design (site, sex, age and extras) is singular; a covariate is "
                             "constant or confounded with site — drop it or add scans")
    # Fisher scoring for log var: E[r^2 / var] = 1 makes the information X'X/2 for every feature
    projector = np.linalg.solve(design.T @ design, design.T)
    mean = _solve(design, values)
    weights = None
    for _ in range(alternations):
        if weights is not None:
            mean = _solve(design, values, weights)
        squared = (values - design @ mean) ** 2
        # a residual of exactly 0 would start log var at -690: floor it far below the typical one
        floor = 1e-12 * np.maximum(squared.mean(0), np.finfo(float).tiny)
        theta = projector @ (np.log(np.maximum(squared, floor)) - _LOG_CHI2_MEAN)
        for _ in range(max_iter):
            ratio = squared / np.exp(design @ theta)
            step = projector @ (ratio - 1.0)
            # one outlying residual can ask for a huge step: move log var by at most 1 per scan
            largest = np.abs(design @ step).max(0)
            step = step * np.minimum(1.0, 1.0 / np.maximum(largest, 1e-300))
            theta = theta + step
            if np.max(np.abs(step)) < tol:
                break
        weights = np.exp(-(design @ theta))
    return mean, theta


def empirical_bayes(location: np.ndarray, spread: np.ndarray, codes: np.ndarray, n_sites: int, *,
                    shrink: bool = True, fixed: int | None = None, max_iter: int = 1000, tol: float = 1e-4):
    """ComBat's site location/scale, shrunk across features (parametric empirical Bayes).

    Parameters
    ----------
    location : numpy.ndarray
        ``(n, g)`` residuals from the reference mean in units of one scale per feature.
    spread : numpy.ndarray
        ``(n, g)`` factor turning a location residual into a standardised one (the feature's
        scale over the scan's covariate-dependent SD); all ones gives ComBat's estimates.
    codes : numpy.ndarray
        Site index of each row.
    n_sites : int
    shrink : bool
        Empirical Bayes (True) or the per-site estimates as they are.
    fixed : int, optional
        The reference site: location 0, scale 1.

    Returns
    -------
    gamma_star, delta_star : numpy.ndarray
        ``(n_sites, g)`` location (in the feature's scale) and variance ratio of each site.
    """
    n_features = location.shape[1]
    gamma = np.zeros((n_sites, n_features))
    delta = np.ones((n_sites, n_features))
    for s in range(n_sites):
        rows, factor = location[codes == s], spread[codes == s]
        gamma_hat = rows.mean(0)
        delta_hat = ((rows - gamma_hat) * factor).var(0, ddof=1)
        if s == fixed:
            continue
        if not shrink or n_features < 2:
            gamma[s], delta[s] = gamma_hat, delta_hat
            continue
        gamma_bar, tau2 = gamma_hat.mean(), gamma_hat.var(ddof=1)
        m, s2 = delta_hat.mean(), delta_hat.var(ddof=1)
        a = (2 * s2 + m ** 2) / s2
        b = (m * s2 + m ** 3) / s2
        n = len(rows)
        g_new, d_new = gamma_hat.copy(), delta_hat.copy()
        for _ in range(max_iter):
            g_old, d_old = g_new, d_new
            g_new = (n * tau2 * gamma_hat + d_old * gamma_bar) / (n * tau2 + d_old)
            d_new = (0.5 * (((rows - g_new) * factor) ** 2).sum(0) + b) / (n / 2.0 + a - 1.0)
            change = max(np.max(np.abs(g_new - g_old) / np.maximum(np.abs(g_old), 1e-12)),
                         np.max(np.abs(d_new - d_old) / d_old))
            if change < tol:
                break
        gamma[s], delta[s] = g_new, d_new
    return gamma, delta


class ComBatLS(ComBat):
    """ComBat with covariate effects on the variance as well as the mean (ComBat-LS).

    Parameters
    ----------
    reference_site : str, optional
        Site whose mean and scale every site is mapped to (its rows are unchanged); ``None``
        maps to the size-weighted average of the sites.
    empirical_bayes : bool
        Shrink the per-site location/scale across features (ComBat's EB step).
    log_features : bool
        Harmonize ``log(x)`` (default; volumes are positive and their site effects
        multiplicative) and map back with ``exp``, so outputs stay positive.
    extra_covariates : sequence of str
        Further numeric covariates, in both the mean and the variance model.
    min_subjects_per_site, sex_coding, random_seed
        See :class:`~bidsharmony.harmonize.base.Harmonizer`.
    """

    name = "combat-ls"

    def __init__(self, *, reference_site: str | None = None, empirical_bayes: bool = True,
                 log_features: bool = True, extra_covariates=(), min_subjects_per_site: int = 10,
                 sex_coding="auto", random_seed: int = 0):
        super().__init__(reference_site=reference_site, empirical_bayes=empirical_bayes,
                         log_features=log_features, extra_covariates=extra_covariates,
                         min_subjects_per_site=min_subjects_per_site, sex_coding=sex_coding,
                         random_seed=random_seed)

    def _site_codes(self, data: validation.PreparedData) -> np.ndarray:
        return np.searchsorted(np.asarray(self.sites_, dtype=object), data.site)

    def _fit(self, data: validation.PreparedData) -> None:
        values = self._features(data)
        covariates = self._covariate_design(data, data.age)
        codes = self._site_codes(data)
        n_sites = len(self.sites_)
        one_hot = np.eye(n_sites)[codes]
        design = np.column_stack([one_hot, covariates])  # a site column each: no shared intercept
        validation.check_residual_df(self.name, len(values), design.shape[1], self._design_terms())
        mean, log_variance = fit_location_scale(design, values)
        if self.reference_site_ is None:
            weights = np.bincount(codes, minlength=n_sites) / len(codes)
        else:
            weights = np.eye(n_sites)[self.sites_.index(self.reference_site_)]
        self.location_ = weights @ mean[:n_sites]
        self.mean_coefficients_ = mean[n_sites:]
        self.log_variance_ = weights @ log_variance[:n_sites]
        self.log_variance_coefficients_ = log_variance[n_sites:]
        # one scale per feature: the SD at the fitted scans' average covariates
        self.scale_ = np.exp(0.5 * (self.log_variance_ + covariates.mean(0) @ self.log_variance_coefficients_))
        expected = self._reference_mean(covariates)
        fixed = None if self.reference_site_ is None else self.sites_.index(self.reference_site_)
        self.gamma_star_, self.delta_star_ = empirical_bayes(
            (values - expected) / self.scale_, self.scale_ / self._covariate_sd(covariates), codes, n_sites,
            shrink=self.empirical_bayes, fixed=fixed)

    def _reference_mean(self, covariates: np.ndarray) -> np.ndarray:
        return self.location_ + row_products(covariates, self.mean_coefficients_)

    def _covariate_sd(self, covariates: np.ndarray) -> np.ndarray:
        return np.exp(0.5 * (self.log_variance_ + row_products(covariates, self.log_variance_coefficients_)))

    def _adjusted_residuals(self, data: validation.PreparedData, values: np.ndarray):
        expected = self._reference_mean(self._covariate_design(data, self._age_for_design(data.age)))
        codes = self._site_codes(data)
        adjusted = ((values - expected) / self.scale_ - self.gamma_star_[codes]) / np.sqrt(self.delta_star_[codes])
        return adjusted, expected, self.scale_

    # ------------------------------------------------------------------ state
    def _get_state(self):
        state = {"design_columns": self._linear_columns(), "site_order": self.sites_}
        arrays = {"location": self.location_, "mean_coefficients": self.mean_coefficients_, "scale": self.scale_,
                  "log_variance": self.log_variance_, "log_variance_coefficients": self.log_variance_coefficients_,
                  "gamma_star": self.gamma_star_, "delta_star": self.delta_star_}
        return state, arrays

    def _set_state(self, state, arrays):
        if list(state["site_order"]) != list(self.sites_):
            raise ValueError("site order in the state differs from the manifest's site list")
        n_sites, n_features = len(self.sites_), len(self.feature_names_)
        n_columns = len(self._linear_columns())
        self._restore_arrays(arrays, {
            "location": (n_features,), "log_variance": (n_features,), "scale": (n_features,),
            "mean_coefficients": (n_columns, n_features), "log_variance_coefficients": (n_columns, n_features),
            "gamma_star": (n_sites, n_features), "delta_star": (n_sites, n_features)})
