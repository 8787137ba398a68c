"""Synthetic ROI tables: the known truth is what the docstring promises."""

import numpy as np
import pandas as pd
import pytest

from bidsharmony.datasets.tabular import (
    error_to_reference,
    make_feature_table,
    site_distortion,
    site_prediction_accuracy,
)


@pytest.fixture(scope="module")
def table():
    return make_feature_table([80, 60, 70], n_sites=3, n_features=6, seed=4, traveling_subjects=5)


def test_shapes_index_and_columns(table):
    n = 80 + 60 + 70 + 5 * 3
    for frame in (table.features, table.covariates, table.hidden, table.truth_site_free, table.truth_reference):
        assert len(frame) == n and frame.index.equals(table.features.index)
    assert table.features.index.is_unique
    assert list(table.features.columns) == [f"roi-{j:03d}" for j in range(1, 7)]
    assert list(table.covariates.columns) == ["site", "age", "sex"]
    assert table.covariates.site.value_counts().to_dict() == {"siteA": 85, "siteB": 65, "siteC": 75}
    assert set(table.covariates.sex) == {"M", "F"} and (table.features.to_numpy() > 0).all()


def test_same_seed_same_table_other_seed_other_table(table):
    again = make_feature_table([80, 60, 70], n_sites=3, n_features=6, seed=4, traveling_subjects=5)
    pd.testing.assert_frame_equal(table.features, again.features)
    other = make_feature_table([80, 60, 70], n_sites=3, n_features=6, seed=5, traveling_subjects=5)
    assert not np.allclose(table.features.to_numpy(), other.features.to_numpy())


def test_reference_site_rows_equal_their_reference_truth(table):
    at_reference = (table.covariates.site == table.reference_site).to_numpy()
    np.testing.assert_allclose(table.features[at_reference], table.truth_reference[at_reference], rtol=1e-12)
    assert error_to_reference(table.truth_reference, table.truth_reference) == 0.0
    assert error_to_reference(table.features, table.truth_reference, ~at_reference) > 2.0


def test_age_ranges_and_traveling_subjects(table):
    for site, (low, high) in zip(table.sites, table.parameters["age_ranges"]):
        regular = (table.covariates.site == site).to_numpy() & ~table.hidden.traveling.to_numpy()
        ages = table.covariates.age[regular]
        assert ages.min() >= low and ages.max() <= high
    travelers = table.hidden[table.hidden.traveling]
    assert travelers.groupby("subject_id").size().eq(3).all()
    per_subject = table.covariates[table.hidden.traveling].groupby(travelers.subject_id)
    assert per_subject["age"].nunique().eq(1).all() and per_subject["site"].nunique().eq(3).all()


def test_site_maps_are_monotone_and_nonlinear():
    z = np.linspace(-4, 4, 401)[:, None]
    table = make_feature_table(10, n_sites=4, n_features=5, seed=0, nonlinear_effect=1.0)
    p = table.parameters
    for k in range(4):
        mapped = site_distortion(z, p["gamma"][k], p["log_scale"][k], p["kappa"][k], p["omega"][k])
        slopes = np.diff(mapped, axis=0) / np.diff(z, axis=0)
        assert (slopes > 0.19).all()  # capped so every map stays monotone (slope >= 0.2)
        residual = mapped - np.polyval(np.polyfit(z[:, 0], mapped, 1), z)
        assert np.abs(residual).max() > 0.05  # not affine: ComBat cannot undo it


def test_combat_shaped_option_is_affine_in_the_residual():
    """With nonlinear_effect=0, log observed = a + b * log site-free within a site and age/sex."""
    table = make_feature_table(50, n_sites=2, n_features=3, seed=1, nonlinear_effect=0.0)
    site_b = (table.covariates.site == "siteB").to_numpy()
    p = table.parameters
    free = np.log(table.truth_site_free[site_b].to_numpy())
    observed = np.log(table.features[site_b].to_numpy())
    # log x = m + sigma * (gamma + exp(lambda) * (log v - m) / sigma)
    slope = np.exp(p["log_scale"][1])
    implied_mean = (observed - slope * free - p["sigma"] * p["gamma"][1]) / (1 - slope)
    age = table.covariates.age[site_b].to_numpy()[:, None]
    sex = (table.covariates.sex[site_b] == "M").to_numpy()[:, None]
    mean = p["mu"] + p["age_curvature"] * ((age - 20) / 70) ** 2 + p["sex_effect"] * sex
    np.testing.assert_allclose(implied_mean, mean, atol=1e-8)


def test_site_prediction_sees_sites_in_raw_data_only(table):
    raw = site_prediction_accuracy(table.features, table.covariates)
    truth = site_prediction_accuracy(table.truth_reference, table.covariates)
    assert raw > 0.6 and truth < 1 / 3 + 0.12


def test_covariance_effect_adds_noise_outside_the_reference():
    base = make_feature_table(30, n_sites=2, n_features=4, seed=9)
    noisy = make_feature_table(30, n_sites=2, n_features=4, seed=9, covariance_effect=0.5)
    at_reference = (base.covariates.site == "siteA").to_numpy()
    np.testing.assert_allclose(noisy.features[at_reference], base.features[at_reference])
    assert not np.allclose(noisy.features[~at_reference], base.features[~at_reference])
    pd.testing.assert_frame_equal(noisy.truth_reference, base.truth_reference)


def test_bad_arguments():
    with pytest.raises(ValueError, match="reference_site"):
        make_feature_table(10, n_sites=2, reference_site="siteZ")
    with pytest.raises(ValueError, match="one count per site"):
        make_feature_table([10, 10], n_sites=3)
