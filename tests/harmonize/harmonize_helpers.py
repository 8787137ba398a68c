"""Helpers shared by the harmonize tests (imported by conftest.py and the test modules)."""

import warnings

import numpy as np
import pandas as pd

#: tiny but capable flow-SCM settings used across the tests
FAST_FLOW = dict(context_hidden=(32, 32), context_features=16, hidden_features=32, num_bins=6,
                 learning_rate=3e-3, epochs=30, min_subjects_per_site=5)


def fit_quietly(harmonizer, features, covariates):
    """Fit without the expected overlap/range warnings cluttering the test output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return harmonizer.fit(features, covariates)


def subset(table, mask):
    """Features and covariates of the rows in ``mask``."""
    mask = np.asarray(mask)
    return table.features[mask], table.covariates[mask]


def covariate_effects(features: pd.DataFrame, covariates: pd.DataFrame) -> np.ndarray:
    """OLS coefficients of sex (M=1) and age on log features, per feature: shape (2, n_features)."""
    sex = (covariates["sex"].astype(str).str.upper().str[0] == "M").to_numpy(float)
    age = covariates["age"].to_numpy(float)
    design = np.column_stack([np.ones_like(age), sex, age])
    coef, *_ = np.linalg.lstsq(design, np.log(features.to_numpy()), rcond=None)
    return coef[1:]


def gaussian_baseline_log_prob(train_features, train_covariates, test_features, test_covariates):
    """Held-out log-density (per scan, in the features' units) of a linear-Gaussian model:
    log x ~ N(W [1, sex, age, age^2, one-hot site], full covariance), fitted on the train rows."""
    sites = sorted(set(train_covariates["site"]))

    def design(covariates):
        age = covariates["age"].to_numpy(float) / 100
        sex = (covariates["sex"].astype(str).str[0] == "M").to_numpy(float)
        onehot = [(covariates["site"] == s).to_numpy(float) for s in sites[1:]]
        return np.column_stack([np.ones_like(age), sex, age, age ** 2, *onehot])

    train_log = np.log(train_features.to_numpy())
    coef, *_ = np.linalg.lstsq(design(train_covariates), train_log, rcond=None)
    residual = train_log - design(train_covariates) @ coef
    covariance = np.cov(residual, rowvar=False)
    test_log = np.log(test_features.to_numpy())
    centred = test_log - design(test_covariates) @ coef
    _, logdet = np.linalg.slogdet(covariance)
    mahalanobis = np.einsum("ij,jk,ik->i", centred, np.linalg.inv(covariance), centred)
    dim = centred.shape[1]
    log_density = -0.5 * (mahalanobis + logdet + dim * np.log(2 * np.pi))
    return log_density - test_log.sum(axis=1)  # Jacobian of log: density over the raw units
