"""Harmonizers follow scikit-learn's estimator conventions (issue 23, point 5).

``get_params``/``set_params`` over the constructor's signature, ``sklearn.base.clone`` giving an
unfitted twin with equal parameters, and use inside ``cross_val_score`` — directly with a
scorer, and as a pipeline step in front of a site classifier — as users of a library
harmonizer such as neuroHarmonize evaluate one.
"""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bidsharmony.harmonize import HARMONIZERS, get_harmonizer
from bidsharmony.harmonize.base import _jsonable, constructor_parameters
from bidsharmony.features.combat import ComBat
from bidsharmony.harmonize.errors import HarmonizerParameterError, NotFittedError
from bidsharmony.harmonize.image_base import get_image_harmonizer
from bidsharmony.harmonize.names import IMAGE_HARMONIZERS
from bidsharmony.harmonize.sklearn_adapter import HarmonizerTransformer

# a held-out fold's ages may lie just outside the training fold's: expected, and warned about
pytestmark = pytest.mark.filterwarnings("ignore::bidsharmony.harmonize.errors.CovariateRangeWarning")

ALL = [("table", name) for name in HARMONIZERS] + [("image", name) for name in IMAGE_HARMONIZERS]

#: a parameter of each harmonizer changed by set_params, with its value after normalisation
CHANGES = {
    "combat": ("extra_covariates", ("icv",), ["icv"]),
    "combat-gam": ("age_bounds", (5, 95), [5.0, 95.0]),
    "combat-ls": ("empirical_bayes", False, False),
    "covbat": ("percent_var", 0.8, 0.8),
    "equivariant-pooling": ("hidden", (16, 8), [16, 8]),
    "flow-scm": ("context_hidden", (8,), [8]),
    "blindharmony": ("epochs", 2, 2),
    "deepscm-image": ("latent_dim", 4, 4),
    "harmonizing-flows": ("margin", 1.5, 1.5),
    "histogram-matching": ("random_seed", 3, 3),
}


def make(kind, name, **params):
    return get_harmonizer(name, **params) if kind == "table" else get_image_harmonizer(name, **params)


def cv_folds(covariates, n_splits=3):
    """Site-stratified folds (the covariate table is the ``y`` of a harmonizer, not a label)."""
    return list(StratifiedKFold(n_splits, shuffle=True, random_state=0).split(covariates, covariates["site"]))


@pytest.mark.parametrize("kind, name", ALL)
def test_params_are_the_constructor_signature_and_clone_gives_an_equal_unfitted_twin(kind, name):
    harmonizer = make(kind, name, reference_site="siteB", random_seed=7)
    params = harmonizer.get_params(deep=True)
    assert list(params) == constructor_parameters(type(harmonizer))
    assert params == harmonizer.get_params(deep=False)
    twin = clone(harmonizer)
    assert type(twin) is type(harmonizer) and twin is not harmonizer
    assert twin.get_params() == params and not twin.is_fitted
    # mutable parameters are copies: changing the twin's leaves the original's alone
    for key, value in twin.get_params().items():
        if isinstance(value, list):
            assert value is not params[key]


@pytest.mark.parametrize("kind, name", ALL)
def test_set_params_round_trip(kind, name):
    harmonizer = make(kind, name)
    before = harmonizer.get_params()
    assert harmonizer.set_params(**before) is harmonizer and harmonizer.get_params() == before
    key, value, stored = CHANGES[name]
    harmonizer.set_params(**{key: value})
    assert harmonizer.get_params() == {**before, key: stored}
    # the same values a new harmonizer built with them would hold
    assert harmonizer.get_params() == make(kind, name, **{key: value}).get_params()
    assert clone(harmonizer).get_params()[key] == stored


@pytest.mark.parametrize("kind, name", ALL)
def test_set_params_refuses_unknown_names_and_invalid_values(kind, name):
    harmonizer = make(kind, name)
    before = harmonizer.get_params()
    with pytest.raises(HarmonizerParameterError, match=r"has no parameter 'no_such_param'; valid parameters: .*random_seed"):
        harmonizer.set_params(no_such_param=1)
    with pytest.raises(HarmonizerParameterError):
        harmonizer.set_params(random_seed=-1)
    assert harmonizer.get_params() == before  # a refused call changes nothing


@pytest.mark.parametrize("kind, name", ALL)
def test_both_families_refuse_unknown_constructor_arguments_alike(kind, name):
    with pytest.raises(HarmonizerParameterError, match=r"has no parameter 'no_such_param'; valid parameters:"):
        make(kind, name, no_such_param=1)


@pytest.mark.parametrize("kind, name", ALL)
def test_sidecar_parameters_are_those_of_the_manifest(kind, name):
    """The group level writes ``get_params()`` into JSON sidecars and the manifest its JSON form:
    both read the same (plain values, as the constructors normalise them)."""
    params = make(kind, name).get_params()
    assert json.loads(json.dumps(params, default=str)) == _jsonable(params)


def test_changing_a_parameter_of_a_fitted_model_unfits_it(fitted_combat, small_table):
    model = clone(fitted_combat)
    assert not model.is_fitted and fitted_combat.is_fitted
    model.fit(small_table.features, small_table.covariates)
    model.set_params(random_seed=model.random_seed)  # same value: still the fitted model
    assert model.is_fitted
    model.set_params(log_features=False)
    with pytest.raises(NotFittedError, match="call fit"):
        model.transform(small_table.features, small_table.covariates)


def _site_spread(features: pd.DataFrame, covariates: pd.DataFrame) -> float:
    """Between-site spread of the per-site means of log(feature), averaged over features."""
    means = np.log(features).groupby(covariates["site"].to_numpy()).mean()
    return float(means.std(axis=0).mean())


def test_cross_val_score_with_a_scorer(small_table):
    features, covariates = small_table.features, small_table.covariates

    def scorer(harmonizer, test_features, test_covariates):  # higher is better: less site spread
        return -_site_spread(harmonizer.transform(test_features, test_covariates), test_covariates)

    folds = cv_folds(covariates)
    scores = cross_val_score(ComBat(reference_site=small_table.reference_site, min_subjects_per_site=5),
                             features, covariates, scoring=scorer, cv=folds)
    raw = [-_site_spread(features.iloc[test], covariates.iloc[test]) for _, test in folds]
    assert scores.shape == (3,) and np.all(scores > np.asarray(raw))


def test_pipeline_with_a_site_classifier_in_cross_val_score(combat_shaped_table):
    features, covariates = combat_shaped_table.features, combat_shaped_table.covariates
    table = features.join(covariates[["site", "age", "sex"]])
    sites = covariates["site"]
    folds = cv_folds(covariates)
    pipeline = make_pipeline(HarmonizerTransformer(ComBat(min_subjects_per_site=5)), StandardScaler(),
                             LogisticRegression(max_iter=1000))
    harmonized = cross_val_score(pipeline, table, sites, cv=folds, scoring="balanced_accuracy")
    raw = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                          features, sites, cv=folds, scoring="balanced_accuracy")
    assert raw.mean() > 0.85  # the raw features tell the three sites apart...
    # ...ComBat, fitted in each training fold, much less (measured 0.91 -> 0.52); not down to chance
    # (1/3), as the sites differ in age (means 38-72 y) and the age effect is rightly kept
    assert harmonized.mean() < raw.mean() - 0.3
    # nested parameters reach the harmonizer (deep=True), so a grid search can tune it
    assert pipeline.get_params(deep=True)["harmonizertransformer__harmonizer__empirical_bayes"] is True
    search = GridSearchCV(pipeline, {"harmonizertransformer__harmonizer__empirical_bayes": [True, False]},
                          cv=folds, scoring="balanced_accuracy").fit(table, sites)
    assert search.best_estimator_[0].harmonizer_.is_fitted


def test_pipeline_step_needs_the_covariate_columns(small_table):
    step = HarmonizerTransformer(ComBat(min_subjects_per_site=5))
    with pytest.raises(Exception, match="lacks the covariate column"):
        step.fit(small_table.features)
    fitted = step.fit(small_table.features.join(small_table.covariates[["site", "age", "sex"]]))
    assert list(fitted.get_feature_names_out()) == list(small_table.features.columns)
    assert not step.harmonizer.is_fitted  # the step fits a clone
