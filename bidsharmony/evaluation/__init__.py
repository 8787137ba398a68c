"""Does harmonization remove the site and keep the biology? Metrics and leakage-safe protocols.

Metrics (each a plain function, usable alone)
---------------------------------------------
:func:`site_predictability`      cross-validated balanced accuracy of predicting the site (chance 1/k)
:func:`cross_site_prediction`    train on a source site, test on the others (Wang et al. 2021, Tables 1-2)
:func:`effect_sizes`             per-feature age/sex/diagnosis associations; :func:`effect_size_agreement`
:func:`truth_error`              RMSE to a known site-free truth
:func:`traveling_subject_icc`    ICC(2,1) (and ICC(3,1)) of each feature across sites; :func:`icc`
:func:`site_mmd`                 unbiased MMD² between sites (RBF, median heuristic); :func:`mmd2_unbiased`
:func:`design_warnings`          small sites, non-overlapping age ranges, confounded sex/diagnosis
:func:`recommend_method`         the method the figures favour, with the reason
:func:`evaluate_representation`  ΔEq, Adv, M, ACC of a learnt representation (Lokhande et al. 2022)

Protocol
--------
Every metric that trains fits the harmonizer inside the training fold only
(:func:`harmonize_in_folds`), with participant-grouped folds (:func:`make_folds`).
:func:`evaluate_harmonizers` runs everything for the raw features and for each harmonizer
and returns :class:`EvaluationResults`; :func:`bidsharmony.reports.group.write_group_report`
turns it into an HTML page.
"""

from ._common import EvaluationError, EvaluationUsageError, Fold, IdentityHarmonizer, make_folds
from .agreement import icc, traveling_subject_icc, truth_error
from .biology import effect_size_agreement, effect_sizes
from .design import age_overlap, design_warnings
from .distance import median_heuristic, mmd2_unbiased, site_mmd
from .evaluate import ALL_METRICS, SUMMARY_COLUMNS, EvaluationResults, evaluate_harmonizers, summarize
from .prediction import (
    MLPClassifier,
    MLPRegressor,
    build_mlp,
    cross_site_from_folds,
    cross_site_prediction,
    make_predictor,
    summarize_cross_site,
)
from .protocols import FoldData, cross_fit, harmonize_in_folds, mask_covariate
from .recommend import recommend_method
from .representation import equivariance_gap, evaluate_representation, site_adversary
from .site import chance_levels, site_predictability, site_predictability_from_folds

__all__ = [
    "ALL_METRICS", "SUMMARY_COLUMNS", "EvaluationError", "EvaluationResults", "EvaluationUsageError", "Fold",
    "FoldData", "IdentityHarmonizer", "MLPClassifier", "MLPRegressor", "age_overlap", "build_mlp",
    "chance_levels", "cross_fit", "cross_site_from_folds", "cross_site_prediction", "design_warnings",
    "effect_size_agreement", "effect_sizes", "equivariance_gap", "evaluate_harmonizers", "evaluate_representation", "harmonize_in_folds", "icc",
    "make_folds", "make_predictor", "mask_covariate", "median_heuristic", "mmd2_unbiased", "recommend_method", "site_mmd",
    "site_adversary", "site_predictability", "site_predictability_from_folds", "summarize", "summarize_cross_site",
    "traveling_subject_icc", "truth_error",
]
