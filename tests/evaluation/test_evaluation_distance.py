"""MMD² with the RBF kernel and the median heuristic."""

import numpy as np
import pytest

from bidsharmony.evaluation import median_heuristic, mmd2_unbiased, site_mmd
from evaluation_data import MeanShift, make_table


def test_mmd_near_zero_for_identical_and_positive_for_shifted():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 4)), rng.normal(size=(300, 4))
    assert abs(mmd2_unbiased(x, y)) < 0.01
    assert mmd2_unbiased(x, y + 1.0) > 0.1


def test_mmd_estimator_is_unbiased():
    rng = np.random.default_rng(1)
    values = [mmd2_unbiased(rng.normal(size=(40, 2)), rng.normal(size=(40, 2)), bandwidth=1.0) for _ in range(60)]
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))
    assert min(values) < 0  # an unbiased estimate fluctuates around 0


def test_median_heuristic_matches_brute_force():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(15, 3)), rng.normal(size=(10, 3))
    z = np.vstack([x, y])
    brute = np.median([np.linalg.norm(z[i] - z[j]) for i in range(len(z)) for j in range(i + 1, len(z))])
    assert median_heuristic(x, y) == pytest.approx(brute)


def test_site_mmd_tables():
    features, covariates, _ = make_table(n_subjects=90, site_shift=2.0)
    raw = site_mmd(features, covariates, reference_site="A")
    assert set(raw["comparison"]) == {"vs_reference", "pairwise", "split_half"}
    assert len(raw[raw.comparison == "pairwise"]) == 3
    harmonized = MeanShift().fit(features, covariates).transform(features, covariates)
    after = site_mmd(harmonized, covariates, reference_site="A")
    vs_raw = raw[raw.comparison == "vs_reference"]["mmd2"]
    vs_after = after[after.comparison == "vs_reference"]["mmd2"]
    assert vs_raw.min() > 0.1 and vs_after.abs().max() < 0.05


def test_site_mmd_removes_age_differences_between_sites_by_default():
    features, covariates, _ = make_table(n_subjects=90, site_shift=0.0, age_slope=0.3, noise=0.5,
                                         age_ranges={"A": (20, 45), "B": (40, 65), "C": (60, 85)})
    naive = site_mmd(features, covariates, reference_site="B", adjust_for=None)
    adjusted = site_mmd(features, covariates, reference_site="B")
    pick = lambda t: t[t.comparison == "vs_reference"]["mmd2"]  # noqa: E731
    assert pick(naive).min() > 0.1
    assert pick(adjusted).abs().max() < 0.05
