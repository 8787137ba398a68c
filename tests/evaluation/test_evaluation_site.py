"""Site predictability on data with a known answer."""

import pytest

from bidsharmony.evaluation import chance_levels, site_predictability
from evaluation_data import MeanShift, make_table


def test_chance_levels_are_analytic():
    levels = chance_levels(["A"] * 50 + ["B"] * 30 + ["C"] * 20)
    assert levels["chance"] == pytest.approx(1 / 3)
    assert levels["majority_rate"] == pytest.approx(0.5)
    assert 1 / 3 < levels["chance_upper95"] < 0.5


def test_pure_site_shift_is_predictable_raw_and_at_chance_after_removal():
    features, covariates, _ = make_table(n_subjects=90, site_shift=3.0)
    raw = site_predictability(features, covariates)
    assert raw["balanced_accuracy"] > 0.9
    assert raw["chance"] == pytest.approx(1 / 3)
    after = site_predictability(features, covariates, MeanShift)
    assert after["balanced_accuracy"] < after["chance_upper95"] + 0.05
    assert abs(after["balanced_accuracy"] - 1 / 3) < 0.15


def test_identical_distributions_are_at_chance():
    features, covariates, _ = make_table(n_subjects=90, site_shift=0.0)
    result, per_fold = site_predictability(features, covariates, return_folds=True)
    assert result["balanced_accuracy"] < result["chance_upper95"] + 0.05
    assert len(per_fold) == 5 and set(per_fold["fold"]) == set(range(5))


def test_mlp_site_classifier_option():
    features, covariates, _ = make_table(n_subjects=60, site_shift=4.0)
    result = site_predictability(features, covariates, classifier="mlp", n_splits=3, mlp_epochs=15)
    assert result["classifier"] == "mlp"
    assert result["balanced_accuracy"] > 0.8


def test_age_confounded_sites_are_not_detected_through_age_once_adjusted():
    # no site effect at all, but the sites recruited different ages: features depend on age only
    features, covariates, _ = make_table(n_subjects=90, site_shift=0.0, age_slope=0.3, noise=0.5,
                                         age_ranges={"A": (20, 45), "B": (40, 65), "C": (60, 85)})
    naive = site_predictability(features, covariates, adjust_for=None)
    adjusted = site_predictability(features, covariates)
    assert naive["balanced_accuracy"] > 0.7  # the site is "recognised" through the age of its people
    assert adjusted["adjusted_for"] == "age,sex,diagnosis"
    assert adjusted["balanced_accuracy"] < adjusted["chance_upper95"] + 0.05
