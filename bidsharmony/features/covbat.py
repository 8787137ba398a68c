"""CovBat: ComBat, then harmonization of the residuals' covariance (Chen et al. 2022).

ComBat (:class:`~bidsharmony.features.combat.ComBat`) removes each site's mean and
variance per feature, but leaves the sites' *covariances* different — which matters to any
multivariate analysis (classifiers, networks, distances between brains). CovBat (Chen et al.,
"Mitigating site effects in covariance for machine learning in neuroimaging data", Human Brain
Mapping 2022) adds a second step on ComBat's standardised residuals ``e`` (covariate effects
already removed):

1. principal components of the pooled residuals: ``e = mu + S V^T`` (``V`` orthonormal);
2. ComBat without covariates or empirical Bayes on the scores of the first ``k`` components
   (those explaining ``percent_var`` of the variance, or ``n_components``): each site's scores
   on component ``j`` get the target location and scale, ``s' = (s - m_ij) / sd_ij * sd_j + m_j``;
3. back to feature space, ``e' = e + (S'_k - S_k) V_k^T`` (later components untouched), then
   ComBat's de-standardisation (covariate effects and scale restored).

This is a re-implementation from the paper's description in NumPy on top of our ComBat (no
CovBat package is available on PyPI); ``n_components`` / ``percent_var`` follow the paper's
defaults (95 % of the variance), the score step uses no empirical Bayes (the paper's default).

Reference site
--------------
Without ``reference_site`` the targets are the pooled ones (ComBat's grand mean and pooled
within-site variance of each score, as in the paper). With a reference site, ComBat maps every
site to the reference's location and scale (neuroHarmonize ``ref_batch``), and the score step
maps every other site's score distribution (mean and SD on each leading component) onto the
*reference site's* — its rows are returned unchanged, bit for bit. The components are those
of the pooled residuals, as in the paper; only the targets change.

Saved model: ComBat's arrays plus ``pca_mean`` (p), ``pca_components`` (p x k), per-site
``score_location`` / ``score_scale`` (sites x k) and ``target_location`` / ``target_scale``
(k) — NumPy arrays, no pickle.
"""

from __future__ import annotations

import logging

import numpy as np

from ..utils.rowwise import row_products
from ..harmonize import validation
from .combat import ComBat
from ..harmonize.errors import HarmonizerParameterError

LOGGER = logging.getLogger(__name__)


class CovBat(ComBat):
    """ComBat followed by covariance harmonization of the residuals (CovBat).

    Parameters
    ----------
    percent_var : float
        Harmonize the leading principal components that together explain at least this share
        of the residual variance (paper default 0.95). Ignored when ``n_components`` is given.
    n_components : int, optional
        Number of leading components to harmonize (0 reduces CovBat to ComBat).
    reference_site : str, optional
        Site every site is mapped to, means, variances and leading-component score
        distributions alike; its rows are returned unchanged. ``None``: the pooled targets.
    empirical_bayes, log_features, extra_covariates, min_subjects_per_site, sex_coding, random_seed
        As in :class:`~bidsharmony.features.combat.ComBat` (``empirical_bayes`` applies to
        the ComBat step; ``log_features=True`` by default: the residuals are those of
        ``log(x)`` and every output is positive).
    """

    name = "covbat"

    def __init__(self, *, reference_site: str | None = None, percent_var: float = 0.95,
                 n_components: int | None = None, empirical_bayes: bool = True,
                 log_features: bool = True, extra_covariates=(), min_subjects_per_site: int = 10,
                 sex_coding="auto", random_seed: int = 0):
        super().__init__(reference_site=reference_site, empirical_bayes=empirical_bayes,
                         log_features=log_features, extra_covariates=extra_covariates,
                         min_subjects_per_site=min_subjects_per_site, sex_coding=sex_coding,
                         random_seed=random_seed)
        try:
            percent_var = float(percent_var)
        except (TypeError, ValueError):
            percent_var = float("nan")
        if not 0.0 < percent_var <= 1.0:
            raise HarmonizerParameterError(f"percent_var must be in (0, 1], got {percent_var!r}")
        self.percent_var = percent_var
        self.n_components = (None if n_components is None
                             else validation.check_positive_int("n_components", n_components, minimum=0))

    # ------------------------------------------------------------------ fit
    def _residuals(self, data: validation.PreparedData) -> np.ndarray:
        """ComBat-adjusted standardised residuals; the reference site's are its own (its rows
        are left unchanged, so the covariance to match is that of its raw residuals)."""
        values = self._features(data)
        adjusted, expected, scale = self._adjusted_residuals(data, values)
        if self.reference_site_ is not None:
            at_reference = data.site == self.reference_site_
            adjusted[at_reference] = ((values - expected) / scale)[at_reference]
        return adjusted

    def _choose_components(self, singular_values: np.ndarray, n_rows: int, n_features: int) -> int:
        available = min(n_rows - 1, n_features)
        if self.n_components is not None:
            if self.n_components > available:
                raise HarmonizerParameterError(
                    f"n_components={self.n_components} exceeds the {available} principal components "
                    f"that {n_rows} scans x {n_features} features allow; lower it")
            return self.n_components
        variance = singular_values[:available] ** 2
        explained = np.cumsum(variance) / variance.sum()
        # the paper: the first k whose cumulative share reaches percent_var
        return int(min(np.searchsorted(explained, self.percent_var - 1e-12) + 1, available))

    def _fit(self, data: validation.PreparedData) -> None:
        super()._fit(data)
        residuals = self._residuals(data)
        self.pca_mean_ = residuals.mean(axis=0)
        centred = residuals - self.pca_mean_
        _, singular_values, components_t = np.linalg.svd(centred, full_matrices=False)
        k = self._choose_components(singular_values, *centred.shape)
        components = components_t[:k].T
        # a component's sign is arbitrary; fix it (largest loading positive) for reproducibility
        signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(k)])
        self.pca_components_ = components * np.where(signs == 0, 1.0, signs)
        explained = singular_values ** 2 / np.sum(singular_values ** 2)
        self.explained_variance_ratio_ = explained[:k]
        scores = centred @ self.pca_components_
        site_index = np.searchsorted(np.asarray(self.sites_, dtype=object), data.site)
        n_sites = len(self.sites_)
        location = np.zeros((n_sites, k))
        spread = np.ones((n_sites, k))
        for index in range(n_sites):
            own = scores[site_index == index]
            location[index] = own.mean(axis=0)
            spread[index] = own.std(axis=0, ddof=1)
        if self.reference_site_ is None:
            # ComBat without covariates: grand mean and pooled within-site variance (ddof 0)
            target_location = scores.mean(axis=0)
            target_scale = np.sqrt(((scores - location[site_index]) ** 2).mean(axis=0))
        else:
            reference = self.sites_.index(self.reference_site_)
            target_location, target_scale = location[reference].copy(), spread[reference].copy()
        self.score_location_ = location
        self.score_scale_ = np.maximum(spread, 1e-12)  # a constant score needs no rescaling
        self.target_location_ = target_location
        self.target_scale_ = target_scale
        LOGGER.info("covbat: %d of %d principal components harmonized (%.1f %% of the residual variance)",
                    k, len(singular_values), 100 * explained[:k].sum())

    # ------------------------------------------------------------------ transform
    def _adjust_residuals(self, adjusted: np.ndarray, data: validation.PreparedData) -> np.ndarray:
        if self.pca_components_.shape[1] == 0:
            return adjusted
        site_index = np.searchsorted(np.asarray(self.sites_, dtype=object), data.site)
        scores = row_products(adjusted - self.pca_mean_, self.pca_components_)
        moved = ((scores - self.score_location_[site_index]) / self.score_scale_[site_index]
                 * self.target_scale_ + self.target_location_)
        # only the change of the leading scores goes back: later components stay as they are
        return adjusted + row_products(moved - scores, self.pca_components_.T)

    # ------------------------------------------------------------------ state
    def _get_state(self):
        state, arrays = super()._get_state()
        state["n_components"] = int(self.pca_components_.shape[1])
        state["explained_variance_ratio"] = [float(v) for v in self.explained_variance_ratio_]
        arrays.update(pca_mean=self.pca_mean_, pca_components=self.pca_components_,
                      score_location=self.score_location_, score_scale=self.score_scale_,
                      target_location=self.target_location_, target_scale=self.target_scale_)
        return state, arrays

    def _set_state(self, state, arrays):
        super()._set_state(state, arrays)
        n_sites, n_features = len(self.sites_), len(self.feature_names_)
        k = int(state["n_components"])
        self._restore_arrays(arrays, {
            "pca_mean": (n_features,), "pca_components": (n_features, k),
            "score_location": (n_sites, k), "score_scale": (n_sites, k),
            "target_location": (k,), "target_scale": (k,)})
        self.explained_variance_ratio_ = np.asarray(state.get("explained_variance_ratio", []), dtype=float)
