"""Effect sizes recover planted associations."""

import numpy as np
import pandas as pd
import pytest

from bidsharmony.evaluation import effect_size_agreement, effect_sizes


def _table(n=400, slope=0.5, sex_diff=2.0, dx_diff=-1.5, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    sex = rng.choice(["M", "F"], n)
    dx = rng.choice(["CN", "AD"], n, p=[0.3, 0.7])  # control is the minority: reference must still be CN
    slopes = np.array([slope, 0.0, -slope])
    y = 100 + np.outer(age, slopes) + sex_diff * (sex == "M")[:, None] + dx_diff * (dx == "AD")[:, None] \
        + rng.normal(0, noise, (n, 3))
    index = [f"s{i}" for i in range(n)]
    features = pd.DataFrame(y, index=index, columns=["a", "b", "c"])
    covariates = pd.DataFrame({"site": "X", "age": age, "sex": sex, "diagnosis": dx}, index=index)
    return features, covariates


def test_effect_sizes_recover_planted_slopes():
    features, covariates = _table()
    eff = effect_sizes(features, covariates).set_index(["feature", "term"])
    assert eff.loc[("a", "age"), "coef"] == pytest.approx(0.5, abs=0.02)
    assert eff.loc[("b", "age"), "coef"] == pytest.approx(0.0, abs=0.02)
    assert eff.loc[("c", "age"), "coef"] == pytest.approx(-0.5, abs=0.02)
    assert eff.loc[("a", "sex"), "coef"] == pytest.approx(2.0, abs=0.3)
    assert eff.loc[("a", "diagnosis[AD]"), "coef"] == pytest.approx(-1.5, abs=0.3)
    # standardised: age per SD of age over a residual SD of 1
    sd_age = covariates["age"].std()
    assert eff.loc[("a", "age"), "std_effect"] == pytest.approx(0.5 * sd_age, rel=0.1)
    assert eff.loc[("a", "sex"), "std_effect"] == pytest.approx(2.0, abs=0.3)  # Cohen's d, residual SD 1
    assert eff.loc[("a", "age"), "p"] < 1e-10 and eff.loc[("b", "age"), "p"] > 1e-3


def test_agreement_identity_and_truth():
    features, covariates = _table()
    before = effect_sizes(features, covariates)
    rng = np.random.default_rng(3)
    noisy = features + rng.normal(0, 3.0, features.shape)  # site-like noise shrinks standardised effects
    after = effect_sizes(noisy, covariates)
    same = effect_size_agreement(before, before, before).set_index("term")
    assert np.allclose(same["r_vs_raw"], 1) and np.allclose(same["mean_abs_diff_vs_truth"], 0)
    agreement = effect_size_agreement(after, before, truth=before).set_index("term")
    assert agreement.loc["age", "r_vs_truth"] > 0.9
    assert agreement.loc["age", "mean_abs_diff_vs_truth"] > 0.5
