"""Shared synthetic tables and quickly fitted harmonizers for the harmonize tests.

Everything here is small (a few hundred scans, 5 features, tiny flows) so the whole folder runs
in well under three minutes on two cores with one torch thread. Fitted models are cached per
session: several tests read the same fit.
"""

import numpy as np
import pytest
import torch

from bidsharmony.datasets.tabular import make_feature_table
from harmonize_helpers import FAST_FLOW, fit_quietly

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def small_table():
    """3 sites x 60 scans, 4 features, non-linear site effects."""
    return make_feature_table(60, n_sites=3, n_features=4, seed=3)


@pytest.fixture(scope="session")
def nonlinear_table():
    """3 sites x 500 scans + 20 traveling subjects, 4 features, non-linear site effects."""
    return make_feature_table(500, n_sites=3, n_features=4, seed=11, traveling_subjects=20)


@pytest.fixture(scope="session")
def nonlinear_split(nonlinear_table):
    """Train rows (80 % of the regular scans) and test rows (the rest + all traveling subjects)."""
    rng = np.random.default_rng(0)
    traveling = nonlinear_table.hidden["traveling"].to_numpy()
    test = traveling | (rng.random(len(traveling)) < 0.2)
    return ~test, test


@pytest.fixture(scope="session")
def nonlinear_fits(nonlinear_table, nonlinear_split):
    """flow-SCM (quadratic spline), ComBat and ComBat-GAM fitted on the train rows (log features).

    The spline is named: these site effects are nonlinear by construction, which the default
    affine flow (chosen on real tables, BENCHMARKS.md issue 20) cannot undo.
    """
    from bidsharmony.harmonize import get_harmonizer

    train, _ = nonlinear_split
    features, covariates = nonlinear_table.features[train], nonlinear_table.covariates[train]
    reference = nonlinear_table.reference_site
    return {
        "flow-scm": fit_quietly(get_harmonizer("flow-scm", reference_site=reference, random_seed=1,
                                               flow="quadratic-spline", **FAST_FLOW),
                                features, covariates),
        "combat": fit_quietly(get_harmonizer("combat", reference_site=reference, log_features=True),
                              features, covariates),
        "combat-gam": fit_quietly(get_harmonizer("combat-gam", reference_site=reference, log_features=True),
                                  features, covariates),
    }


@pytest.fixture(scope="session")
def combat_shaped_table():
    """Site effects exactly of ComBat's form (additive + multiplicative, no distortion)."""
    return make_feature_table(150, n_sites=3, n_features=6, seed=5, nonlinear_effect=0.0,
                              additive_effect=0.8, multiplicative_effect=0.3)


@pytest.fixture(scope="session")
def fitted_combat(small_table):
    from bidsharmony.features.combat import ComBat

    return fit_quietly(ComBat(reference_site=small_table.reference_site, min_subjects_per_site=5),
                       small_table.features, small_table.covariates)


@pytest.fixture(scope="session")
def fitted_covbat(small_table):
    from bidsharmony.features.covbat import CovBat

    return fit_quietly(CovBat(reference_site=small_table.reference_site, min_subjects_per_site=5),
                       small_table.features, small_table.covariates)


@pytest.fixture(scope="session")
def covariance_table():
    """3 sites x 200 scans, 10 features, ComBat-shaped site effects plus a site-specific shared
    noise factor at the non-reference sites (different covariance matrices)."""
    return make_feature_table(200, n_sites=3, n_features=10, seed=0, covariance_effect=1.0,
                              nonlinear_effect=0.0)


@pytest.fixture(scope="session")
def fitted_flow(small_table):
    from bidsharmony.features.flow_scm import FlowSCMHarmonizer

    harmonizer = FlowSCMHarmonizer(flow="quadratic-spline", random_seed=7,
                                   reference_site=small_table.reference_site, **{**FAST_FLOW, "epochs": 15})
    return fit_quietly(harmonizer, small_table.features, small_table.covariates)
