"""ICC and error to the ground truth."""

import numpy as np
import pandas as pd
import pytest

from bidsharmony.evaluation import icc, traveling_subject_icc, truth_error
from evaluation_data import make_table

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]


def test_icc_matches_shrout_fleiss_published_values():
    assert icc(SHROUT_FLEISS, "2,1") == pytest.approx(0.29, abs=0.005)
    assert icc(SHROUT_FLEISS, "3,1") == pytest.approx(0.71, abs=0.005)


def test_icc_high_without_site_noise_low_with_strong_site_noise():
    rng = np.random.default_rng(0)
    people = rng.normal(0, 1, (40, 1))
    clean = people + rng.normal(0, 0.05, (40, 3))
    assert icc(clean, "2,1") > 0.95
    noisy = people + rng.normal(0, 3.0, (40, 3))
    assert icc(noisy, "2,1") < 0.3
    shifted = people + np.array([0.0, 3.0, -3.0]) + rng.normal(0, 0.05, (40, 3))
    assert icc(shifted, "3,1") > 0.95  # consistency ignores a constant site offset ...
    assert icc(shifted, "2,1") < 0.2   # ... absolute agreement does not


def test_traveling_subject_icc_on_tables():
    features, covariates, truth = make_table(n_subjects=30, traveling=True, site_shift=4.0, scan_noise=0.1)
    raw = traveling_subject_icc(features, covariates)
    clean = traveling_subject_icc(truth, covariates)
    assert (raw["n_subjects"] == 30).all() and (raw["n_sites"] == 3).all()
    assert clean["icc_2_1"].min() > 0.95
    assert raw["icc_2_1"].median() < clean["icc_2_1"].median() - 0.3
    not_traveling = make_table(n_subjects=30, traveling=False)
    assert traveling_subject_icc(not_traveling[0], not_traveling[1]).empty


def test_traveling_subject_icc_drops_sparse_sites():
    features, covariates, _ = make_table(n_subjects=12, traveling=True)
    keep = ~((covariates["site"] == "C") & (covariates["participant_id"] > "sub-001"))
    table = traveling_subject_icc(features[keep], covariates[keep])
    assert set(table["sites"]) == {"A,B"} and (table["n_subjects"] == 12).all()


def test_truth_error_known_offset():
    truth = pd.DataFrame({"x": np.arange(10.0), "y": np.arange(10.0) ** 2})
    error = truth_error(truth + 1.0, truth).set_index("feature")
    assert error.loc["x", "rmse"] == pytest.approx(1.0)
    assert error.loc["x", "bias"] == pytest.approx(1.0)
    assert error.loc["x", "rmse_centered"] == pytest.approx(0.0, abs=1e-12)
    assert error.loc["x", "nrmse"] == pytest.approx(1.0 / truth["x"].std())
