"""ComBat and ComBat-GAM (empirical-Bayes location/scale harmonization) via neuroHarmonize.

Both are fitted with ``neuroHarmonize.harmonizationLearn`` (Johnson et al. 2007; Fortin et al.
2018; Pomponio et al. 2020), with site as the batch and age and sex (plus optional numeric
covariates) as preserved biological covariates; ComBat-GAM models age with a penalised cubic
B-spline (``smooth_terms=["age"]``). What is fitted is then re-expressed as a few arrays and
applied here rather than with ``harmonizationApply``, which removes neuroHarmonize's pitfalls:

* **any subset of the fitted sites** (one row, one site) can be transformed —
  ``harmonizationApply`` fails with "shapes not aligned" when the table holds fewer sites than
  the fit;
* **age outside the GAM's training range** is clamped to the spline's boundary knots with a
  :class:`~bidsharmony.harmonize.errors.CovariateRangeWarning` (``out_of_range="clamp"``, the
  default) or refused with :class:`~bidsharmony.harmonize.errors.CovariateRangeError`
  (``out_of_range="error"``), instead of statsmodels' ``NotImplementedError``. Clamping is mild
  for ComBat: the covariate mean is removed before and added back after the site adjustment, so
  an error ``e`` in it only leaks into the output as ``e * (1 - 1/sqrt(delta))``;
  ``age_bounds`` widens the spline range at fit time when later ages are known;
* **no pickle**: neuroHarmonize's model is a 20 MB pickle holding statsmodels objects; the
  saved model here is the grand mean, pooled variance, covariate coefficients, site
  location/scale (``gamma*``, ``delta*``) and spline knots (a few kB of ``.npz``);
* a ``reference_site`` maps every site onto that site's scale (neuroHarmonize ``ref_batch``);
  its rows are returned unchanged. Without one, ComBat maps onto the pooled grand mean.

The transform is identical to neuroHarmonize's (checked in the tests to ~1e-9 relative)::

    z  = (x - grand_mean - C @ beta) / sqrt(var_pooled)
    x' = (z - gamma*[site]) / sqrt(delta*[site]) * sqrt(var_pooled) + grand_mean + C @ beta

where ``C`` holds the covariates (sex, extras, age or its spline basis), and ``x`` is
``log(volume)`` by default (``log_features=True``; the output is mapped back with ``exp``, so it
is always positive).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import pandas as pd
from scipy.interpolate import BSpline

from ..utils.rowwise import row_products
from ..harmonize import validation
from ..harmonize.base import Harmonizer
from ..harmonize.errors import (CovariateError, CovariateRangeError, HarmonizerParameterError,
                               NotEnoughSubjectsError)

LOGGER = logging.getLogger(__name__)


def bspline_basis(values: np.ndarray, knots: np.ndarray, degree: int) -> np.ndarray:
    """B-spline design matrix without its first column (statsmodels' ``include_intercept=False``).

    Parameters
    ----------
    values : numpy.ndarray
        Points inside ``[knots[0], knots[-1]]``.
    knots : numpy.ndarray
        Full knot vector, boundary knots repeated ``degree + 1`` times.
    degree : int
        Spline degree.
    """
    values = np.asarray(values, dtype=np.float64)
    matrix = BSpline.design_matrix(values, np.asarray(knots, dtype=np.float64), int(degree)).toarray()
    return matrix[:, 1:]


class ComBat(Harmonizer):
    """Empirical-Bayes ComBat with age and sex preserved (neuroHarmonize).

    Parameters
    ----------
    reference_site : str, optional
        Site whose scale every site is mapped to (its own rows are unchanged). ``None`` maps
        to the pooled grand mean (classic ComBat).
    empirical_bayes : bool
        Shrink per-site location/scale estimates across features (ComBat's EB step).
    log_features : bool
        Harmonize ``log(x)`` and map back with ``exp`` (default): multiplicative site effects
        become additive and every output stays positive, so a strong negative site shift can
        never turn a small volume negative. Features must then be positive (a value <= 0 is
        refused, naming the row and column). ``False`` harmonizes the raw values (features
        that are not volumes, or neuroHarmonize's own setting); an output <= 0 in a feature
        positive in every fitted scan is then refused rather than returned.
    extra_covariates : sequence of str
        Further numeric covariate columns to preserve (modelled linearly).
    min_subjects_per_site, sex_coding, random_seed
        See :class:`~bidsharmony.harmonize.base.Harmonizer`.
    """

    name = "combat"
    _smooth_age = False

    def __init__(self, *, reference_site: str | None = None, empirical_bayes: bool = True,
                 log_features: bool = True, extra_covariates=(), min_subjects_per_site: int = 10,
                 sex_coding="auto", random_seed: int = 0):
        super().__init__(reference_site=reference_site, min_subjects_per_site=min_subjects_per_site,
                         sex_coding=sex_coding, random_seed=random_seed)
        self.empirical_bayes = bool(empirical_bayes)
        self.log_features = bool(log_features)
        self.extra_covariates = [str(c) for c in extra_covariates]
        clash = set(self.extra_covariates) & set(validation.REQUIRED_COVARIATES)
        if clash:
            raise HarmonizerParameterError(f"extra_covariates must not repeat {sorted(clash)}")

    @property
    def _requires_positive_features(self) -> bool:  # type: ignore[override]
        return self.log_features

    def _extra_covariates(self) -> tuple:
        return tuple(self.extra_covariates)

    def _default_reference_site(self, site_counts):
        return None  # classic ComBat: the pooled grand mean

    # ------------------------------------------------------------------ design
    def _linear_columns(self) -> list:
        """Covariate columns of the design, in neuroHarmonize's order."""
        return [validation.SEX, *self.extra_covariates] + ([] if self._smooth_age else [validation.AGE])

    def _covariate_design(self, data: validation.PreparedData, age: np.ndarray) -> np.ndarray:
        columns = [data.sex, *(data.extra[c] for c in self.extra_covariates)]
        if self._smooth_age:
            design = np.column_stack(columns + [bspline_basis(age, self.knots_, self.spline_degree_)])
        else:
            design = np.column_stack(columns + [age])
        return design

    def _features(self, data: validation.PreparedData) -> np.ndarray:
        return np.log(data.features) if self.log_features else data.features

    # ------------------------------------------------------------------ fit
    def _learn_kwargs(self) -> dict:
        return {}

    def _fit(self, data: validation.PreparedData) -> None:
        from neuroHarmonize import harmonizationLearn
        from statsmodels.tools.sm_exceptions import PerfectSeparationError  # neuroHarmonize's GAM fit

        columns = {"SITE": data.site.astype(str), validation.SEX: data.sex}
        columns.update({c: data.extra[c] for c in self.extra_covariates})
        columns[validation.AGE] = data.age
        covars = pd.DataFrame(columns)
        # neuroHarmonize orders the non-smooth covariates as given; keep age last so that the
        # coefficient rows line up with _covariate_design in both the linear and GAM case.
        smooth = [validation.AGE] if self._smooth_age else []
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # statsmodels' convergence chatter during GAM fits
                model, _ = harmonizationLearn(
                    self._features(data), covars, eb=self.empirical_bayes, smooth_terms=smooth,
                    ref_batch=self.reference_site_, seed=self.random_seed, **self._learn_kwargs(),
                )
        except PerfectSeparationError:
            raise NotEnoughSubjectsError(
                f"{self.name}: the design ({self._design_terms()}) cannot be fitted to {len(data.age)} scans (the "
                "model fits them exactly); add scans, merge small sites or use combat"
            ) from None
        except np.linalg.LinAlgError as error:
            raise CovariateError(
                f"{self.name}: the design ({self._design_terms()}) is singular ({error}); a covariate is constant "
                "or confounded with site — drop it or add scans"
            ) from None
        for line in captured.getvalue().splitlines():
            if line.strip():
                LOGGER.debug("neuroHarmonize: %s", line.strip())
        sites = [str(s) for s in model["SITE_labels"]]
        if sites != self.sites_:
            raise RuntimeError(f"neuroHarmonize ordered the sites as {sites}, expected {self.sites_}")
        n_sites = len(sites)
        if self._smooth_age:
            smoother = model["smooth_model"]["bsplines_constructor"].smoothers[0]
            self.knots_ = np.asarray(smoother.knots, dtype=np.float64)
            self.spline_degree_ = int(smoother.degree)
        self.grand_mean_ = np.asarray(model["stand_mean"][:, 0], dtype=np.float64)
        self.var_pooled_ = np.asarray(model["var_pooled"], dtype=np.float64).reshape(-1)
        self.covariate_coefficients_ = np.asarray(model["B_hat"][n_sites:], dtype=np.float64)
        self.gamma_star_ = np.asarray(model["gamma_star"], dtype=np.float64)
        self.delta_star_ = np.asarray(model["delta_star"], dtype=np.float64)
        expected_columns = self._covariate_design(data, data.age).shape[1]
        if self.covariate_coefficients_.shape[0] != expected_columns:
            raise RuntimeError("unexpected neuroHarmonize design layout "
                               f"({self.covariate_coefficients_.shape[0]} vs {expected_columns} columns)")
        # checked after the fit because the GAM's spline width is neuroHarmonize's choice
        validation.check_residual_df(self.name, len(data.age), n_sites + expected_columns, self._design_terms())

    def _design_terms(self) -> str:
        """The design's terms, as an error message names them."""
        age = "age spline" if self._smooth_age else "age"
        return ", ".join(["site", validation.SEX, *self.extra_covariates, age])

    # ------------------------------------------------------------------ transform
    def _age_for_design(self, age: np.ndarray) -> np.ndarray:
        """Age as the design uses it (linear ComBat extrapolates; see ComBatGAM)."""
        summary = self.covariate_summary_["age"]
        validation.warn_outside_fitted_range(age, summary["min"], summary["max"],
                                             action="extrapolated linearly")
        return age

    def _adjusted_residuals(self, data: validation.PreparedData, values: np.ndarray):
        """ComBat's standardised residuals after the site adjustment, and how to map them back.

        Returns ``(adjusted, expected, scale)`` with ``x' = adjusted * scale + expected``.
        """
        site_index = np.searchsorted(np.asarray(self.sites_, dtype=object), data.site)
        covariate_mean = row_products(self._covariate_design(data, self._age_for_design(data.age)),
                                      self.covariate_coefficients_)
        expected = self.grand_mean_ + covariate_mean
        scale = np.sqrt(self.var_pooled_)
        standardized = (values - expected) / scale
        adjusted = (standardized - self.gamma_star_[site_index]) / np.sqrt(self.delta_star_[site_index])
        return adjusted, expected, scale

    def _adjust_residuals(self, adjusted: np.ndarray, data: validation.PreparedData) -> np.ndarray:
        """Hook for methods that further adjust ComBat's residuals (CovBat); identity here."""
        return adjusted

    def _transform(self, data: validation.PreparedData) -> np.ndarray:
        values = self._features(data)
        adjusted, expected, scale = self._adjusted_residuals(data, values)
        harmonized = self._adjust_residuals(adjusted, data) * scale + expected
        if self.reference_site_ is not None:
            at_reference = data.site == self.reference_site_
            harmonized[at_reference] = values[at_reference]
        if self.log_features:
            harmonized = np.exp(harmonized)
            if self.reference_site_ is not None:
                harmonized[at_reference] = data.features[at_reference]  # bit-exact, no exp(log(x))
        return harmonized

    # ------------------------------------------------------------------ state
    def _get_state(self):
        state = {"design_columns": self._linear_columns() + (["age_spline"] if self._smooth_age else []),
                 "site_order": self.sites_}
        arrays = {"grand_mean": self.grand_mean_, "var_pooled": self.var_pooled_,
                  "covariate_coefficients": self.covariate_coefficients_,
                  "gamma_star": self.gamma_star_, "delta_star": self.delta_star_}
        if self._smooth_age:
            state["spline_degree"] = self.spline_degree_
            arrays["age_knots"] = self.knots_
        return state, arrays

    def _set_state(self, state, arrays):
        if list(state["site_order"]) != list(self.sites_):
            raise ValueError("site order in the state differs from the manifest's site list")
        self.grand_mean_ = arrays["grand_mean"]
        self.var_pooled_ = arrays["var_pooled"]
        self.covariate_coefficients_ = arrays["covariate_coefficients"]
        self.gamma_star_ = arrays["gamma_star"]
        self.delta_star_ = arrays["delta_star"]
        n_sites, n_features = len(self.sites_), len(self.feature_names_)
        for key in ("grand_mean", "var_pooled"):
            if arrays[key].shape != (n_features,):
                raise ValueError(f"{key} has shape {arrays[key].shape}, expected ({n_features},)")
        for key in ("gamma_star", "delta_star"):
            if arrays[key].shape != (n_sites, n_features):
                raise ValueError(f"{key} has shape {arrays[key].shape}, expected ({n_sites}, {n_features})")
        if self._smooth_age:
            self.knots_ = arrays["age_knots"]
            self.spline_degree_ = int(state["spline_degree"])


class ComBatGAM(ComBat):
    """ComBat with a smooth (penalised cubic B-spline) age effect: ComBat-GAM.

    Parameters
    ----------
    out_of_range : {"clamp", "error"}
        What ``transform`` does with ages outside the spline's range (the fitted age range,
        or ``age_bounds``): clamp them to the boundary with a warning, or raise.
    age_bounds : (float, float), optional
        Boundary knots of the age spline; set them wider than the fitted ages when later
        data will be older/younger (neuroHarmonize ``smooth_term_bounds``).
    reference_site, empirical_bayes, log_features, extra_covariates, min_subjects_per_site,
    sex_coding, random_seed
        As in :class:`ComBat`. ``random_seed`` also seeds the k-fold choice of the spline
        penalty.

    Notes
    -----
    The penalty is chosen per feature by k-fold cross-validation in statsmodels, which is slow:
    about 27 s for 291 scans x 145 features, 254 s for 10,000 x 145 on two cores.
    """

    name = "combat-gam"
    _smooth_age = True

    def __init__(self, *, reference_site: str | None = None, empirical_bayes: bool = True,
                 log_features: bool = True, extra_covariates=(), out_of_range: str = "clamp",
                 age_bounds=None, min_subjects_per_site: int = 10, sex_coding="auto",
                 random_seed: int = 0):
        super().__init__(reference_site=reference_site, empirical_bayes=empirical_bayes,
                         log_features=log_features, extra_covariates=extra_covariates,
                         min_subjects_per_site=min_subjects_per_site, sex_coding=sex_coding,
                         random_seed=random_seed)
        if out_of_range not in ("clamp", "error"):
            raise HarmonizerParameterError(f"out_of_range must be 'clamp' or 'error', got {out_of_range!r}")
        self.out_of_range = out_of_range
        if age_bounds is not None:
            low, high = (float(b) for b in age_bounds)
            if not low < high:
                raise HarmonizerParameterError(f"age_bounds must be (low, high) with low < high, got {age_bounds!r}")
            age_bounds = [low, high]
        self.age_bounds = age_bounds

    def _learn_kwargs(self) -> dict:
        if self.age_bounds is None:
            return {}
        summary = self.covariate_summary_["age"]
        if self.age_bounds[0] > summary["min"] or self.age_bounds[1] < summary["max"]:
            raise HarmonizerParameterError(
                f"age_bounds {self.age_bounds} must contain the fitted ages ({summary['min']:.4g}-"
                f"{summary['max']:.4g})"
            )
        return {"smooth_term_bounds": tuple(self.age_bounds)}

    def _age_for_design(self, age: np.ndarray) -> np.ndarray:
        low, high = float(self.knots_[0]), float(self.knots_[-1])
        outside = (age < low) | (age > high)
        if outside.any():
            if self.out_of_range == "error":
                raise CovariateRangeError(
                    f"{int(outside.sum())} row(s) have age outside the ComBat-GAM spline range "
                    f"{low:.4g}-{high:.4g} (given {age.min():.4g}-{age.max():.4g}); refit with "
                    "age_bounds covering them, or use out_of_range='clamp'"
                )
            validation.warn_outside_fitted_range(
                age, low, high, action="computed with age clamped to the spline range")
        inside = age[~outside]
        summary = self.covariate_summary_["age"]
        if inside.size and (summary["min"] > low or summary["max"] < high):
            # inside age_bounds but beyond the fitted ages: the penalised spline extrapolates
            validation.warn_outside_fitted_range(inside, summary["min"], summary["max"],
                                                 action="extrapolated by the age spline (within age_bounds)")
        return np.clip(age, low, high)
