"""Equivariant dataset pooling (Lokhande et al. 2022): group maps, exact equivariance of Φ,
persistence, and site invariance against the Naïve baseline.

Everything is small: SO(n) checks on random matrices, and two short fits (3 sites x 120 scans,
8 ROI volumes, 40 + 30 epochs) shared by the module; the whole file runs in ~20 s on 2 cores.
"""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from sklearn.metrics import balanced_accuracy_score

from bidsharmony.datasets.tabular import make_feature_table
from bidsharmony.harmonize.base import Harmonizer
from bidsharmony.harmonize.errors import (
    CovariateError,
    HarmonizerParameterError,
    NotFittedError,
    UnknownSiteError,
)
from bidsharmony.harmonize.names import HARMONIZERS
from bidsharmony.features.pooling import EquivariantPooling
from bidsharmony.features.pooling import groups
from bidsharmony.evaluation.representation import equivariance_gap, minmax_normalize, site_adversary, site_mmd
from bidsharmony.features.pooling.networks import PoolingNetwork
from bidsharmony.features.pooling.training import rbf_mmd_between_sites, stage_one_loss

FAST = dict(epochs_stage1=40, epochs_stage2=30, min_subjects_per_site=5, num_threads=1)


def _fit(model, features, covariates):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sites' age ranges differ on purpose
        return model.fit(features, covariates)


@pytest.fixture(scope="module")
def table():
    """3 sites x 120 scans, 8 ROI volumes; overlapping but different site age ranges (30-80,
    25-65, 45-85); diagnosis as a covariate column (the prediction target)."""
    data = make_feature_table(120, n_sites=3, n_features=8, seed=4, age_ranges=[(30, 80), (25, 65), (45, 85)])
    covariates = data.covariates.copy()
    covariates["diagnosis"] = data.hidden["diagnosis"].map({0: "CN", 1: "AD"})
    test = np.random.default_rng(0).random(len(covariates)) < 0.3
    return data.features, covariates, test


@pytest.fixture(scope="module")
def fits(table):
    features, covariates, test = table
    train_f, train_c = features[~test], covariates[~test]
    return {variant: _fit(EquivariantPooling(variant=variant, target="diagnosis", random_seed=2, **FAST),
                          train_f, train_c)
            for variant in ("naive", "equivariant")}


# ------------------------------------------------------------------------ SO(n) maps
@pytest.mark.parametrize("kind", groups.GROUP_MAPS)
@pytest.mark.parametrize("n", [2, 3, 8])
def test_group_maps_give_rotations(kind, n):
    """expm and Cayley send so(n) to SO(n): R^T R = I to 1e-12, det R = 1."""
    rng = torch.Generator().manual_seed(n)
    skew = groups.hat(3.0 * torch.randn(50, groups.lie_algebra_dim(n), generator=rng, dtype=torch.float64), n)
    assert torch.allclose(skew, -skew.transpose(-1, -2))
    rotations = groups.group_map(kind)(skew)
    assert groups.orthogonality_error(rotations) < 1e-12
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(50, dtype=torch.float64), atol=1e-12)
    table = groups.covariate_group_table(n, 6, kind=kind)
    assert table.shape == (11, n, n)
    assert groups.orthogonality_error(table) < 1e-12
    assert torch.allclose(torch.linalg.det(table), torch.ones(11, dtype=torch.float64), atol=1e-12)
    # G(j, i) = G(i, j)^-1, and d = 0 is the identity
    assert torch.allclose(table[5 + 3] @ table[5 - 3], torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(table[5], torch.eye(n, dtype=torch.float64))


def test_expm_table_matches_scipy_and_is_a_one_parameter_group():
    n = 5
    generator = groups.covariate_generator(n, scale=0.7).numpy()
    table = groups.covariate_group_table(n, 4, scale=0.7, kind="expm").numpy()
    for d in range(-3, 4):
        assert np.allclose(table[d + 3], scipy.linalg.expm(d * generator), atol=1e-12)
    assert np.allclose(table[3 + 1] @ table[3 + 2], table[3 + 3], atol=1e-12)  # G(1) G(2) = G(3)
    # largest rotation angle of one step (before wrapping): 0.7 cot(pi / 2n)
    assert np.abs(np.linalg.eigvals(generator).imag).max() == pytest.approx(groups.rotation_angle_span(n, 0.7))


def test_cayley_is_not_a_homomorphism_but_inverts_exactly():
    table = groups.covariate_group_table(4, 3, kind="cayley")
    assert not torch.allclose(table[2 + 1] @ table[2 + 1], table[2 + 2])
    assert torch.allclose(table[2 + 2] @ table[2 - 2], torch.eye(4, dtype=torch.float64), atol=1e-12)


def test_frame_to_rotation_is_equivariant():
    rng = torch.Generator().manual_seed(0)
    frames = torch.randn(64, 6, 5, generator=rng, dtype=torch.float64)
    rotations = groups.frame_to_rotation(frames)
    assert groups.orthogonality_error(rotations) < 1e-12
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(64, dtype=torch.float64), atol=1e-12)
    for _ in range(5):
        g = groups.random_rotation(6, rng)
        assert float((groups.frame_to_rotation(g @ frames) - g @ rotations).abs().max()) < 1e-10


# ------------------------------------------------------------------------ losses
def test_stage_one_loss_is_zero_for_an_aligned_tau_and_positive_otherwise():
    """Eq. 3: τ_i = G(c_i)^-1 g0 satisfies G(i, j) τ_i = τ_j for every pair."""
    n, n_bins = 4, 5
    table = groups.covariate_group_table(n, n_bins)
    bins = torch.tensor([0, 1, 1, 3, 4, 2])
    g0 = groups.random_rotation(n, torch.Generator().manual_seed(1))
    aligned = torch.stack([table[n_bins - 1 - int(c)] @ g0 for c in bins])  # G(-c) g0
    assert float(stage_one_loss(aligned, bins, table)) < 1e-12
    shuffled = aligned[torch.tensor([1, 0, 2, 3, 4, 5])]
    assert float(stage_one_loss(shuffled, bins, table)) > 0.1
    assert float(stage_one_loss(aligned, torch.zeros(6, dtype=torch.long), table)) == 0.0


def test_stage_one_loss_matches_the_pairwise_definition():
    n, n_bins = 3, 4
    table = groups.covariate_group_table(n, n_bins, kind="cayley")
    rng = torch.Generator().manual_seed(2)
    tau = torch.stack([groups.random_rotation(n, rng) for _ in range(7)])
    bins = torch.tensor([0, 3, 1, 1, 2, 0, 3])
    terms = []
    for i in range(7):
        for j in range(7):
            if bins[i] != bins[j]:
                g = table[int(bins[i] - bins[j]) + n_bins - 1]
                terms.append(((g @ tau[i] - tau[j]) ** 2).sum() + ((torch.linalg.inv(g) @ tau[j] - tau[i]) ** 2).sum())
    assert float(stage_one_loss(tau, bins, table)) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-10)


def test_mmd_loss_is_scale_invariant_and_small_for_matched_sites():
    rng = torch.Generator().manual_seed(3)
    z = torch.randn(120, 4, generator=rng, dtype=torch.float64)
    sites = torch.arange(120) % 3
    shifted = z + (sites == 2)[:, None] * 2.0
    assert float(rbf_mmd_between_sites(shifted, sites)) > 3 * float(rbf_mmd_between_sites(z, sites))
    assert float(rbf_mmd_between_sites(5 * shifted, sites)) == pytest.approx(
        float(rbf_mmd_between_sites(shifted, sites)), rel=1e-9)


# ------------------------------------------------------------------------ Φ equivariance
def _check_phi_equivariance(network, latent, rng):
    with torch.no_grad():
        base = network.represent(latent)
        tau = base["tau"]
        for _ in range(5):
            g = groups.random_rotation(network.n, rng)
            moved = network.represent(g @ latent)
            assert float((moved["tau"] - g @ tau).abs().max()) < 1e-10          # τ(gℓ) = g τ(ℓ)
            assert float((moved["phi"] - g @ base["phi"]).abs().max()) < 1e-5   # Φ(gℓ) = g Φ(ℓ)
            assert float((moved["invariant"] - base["invariant"]).abs().max()) < 1e-8


@pytest.mark.parametrize("n, k, p", [(8, 7, 4), (3, 2, 1), (4, 6, 2)])
def test_phi_is_equivariant_for_random_rotations(n, k, p):
    torch.manual_seed(n)
    network = PoolingNetwork(5, latent_dim=n, frame_vectors=k, output_vectors=p, n_outputs=2)
    with torch.no_grad():  # random weights everywhere, including the τ mixing network
        for param in network.tau_mixing.parameters():
            param.normal_(0, 0.5)
    latent = network.encode(torch.randn(40, 5, dtype=torch.float64))
    _check_phi_equivariance(network, latent, torch.Generator().manual_seed(k))


def test_trained_phi_is_equivariant(fits, table):
    features, covariates, test = table
    model = fits["equivariant"]
    x = torch.as_tensor(model._inputs(model._prepare(features[test], covariates[test], fitted=True)))
    with torch.no_grad():
        latent = model.network_.encode(x)
    _check_phi_equivariance(model.network_, latent, torch.Generator().manual_seed(7))
    rotations = model.rotations(features[test], covariates[test])
    assert groups.orthogonality_error(torch.as_tensor(rotations)) < 1e-10
    assert np.allclose(np.linalg.det(rotations), 1.0)


# ------------------------------------------------------------------------ the harmonizer
def test_registered_and_loadable_by_name(fits, tmp_path):
    assert "equivariant-pooling" in HARMONIZERS
    path = fits["naive"].save(tmp_path / "model")
    assert isinstance(Harmonizer.load(path), EquivariantPooling)


def test_transform_returns_the_representation_not_features(fits, table):
    features, covariates, test = table
    model = fits["equivariant"]
    z = model.transform(features[test], covariates[test])
    assert list(z.columns) == [f"z{i:03d}" for i in range(1, 33)]  # latent_dim 8 x 4 vectors
    assert z.index.equals(features[test].index)
    assert np.isfinite(z.to_numpy()).all()
    assert z.attrs["output_kind"] == "representation"
    manifest = model.manifest()
    assert manifest["output"]["kind"] == "representation"
    assert manifest["output"]["harmonized_features"] is False
    assert "NOT harmonized features" in manifest["output"]["description"]


def test_save_load_transform_identical(fits, table, tmp_path):
    features, covariates, test = table
    for variant, model in fits.items():
        path = model.save(tmp_path / variant)
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["harmonizer"] == "equivariant-pooling"
        assert manifest["hyperparameters"]["variant"] == variant
        assert manifest["state"]["training"]["stage1"][-1]["epoch"] == FAST["epochs_stage1"]
        loaded = Harmonizer.load(path)
        before = model.transform(features[test], covariates[test])
        after = loaded.transform(features[test], covariates[test])
        assert np.array_equal(before.to_numpy(), after.to_numpy())
        assert list(after.columns) == list(before.columns)
        assert loaded.predict(features[test], covariates[test]).equals(model.predict(features[test], covariates[test]))


def test_training_is_seeded(table):
    features, covariates, test = table
    params = dict(FAST, epochs_stage1=3, epochs_stage2=2, random_seed=5, target="sex")
    a = _fit(EquivariantPooling(**params), features[~test], covariates[~test]).transform(features, covariates)
    b = _fit(EquivariantPooling(**params), features[~test], covariates[~test]).transform(features, covariates)
    c = _fit(EquivariantPooling(**{**params, "random_seed": 6}), features[~test], covariates[~test]).transform(
        features, covariates)
    assert np.array_equal(a.to_numpy(), b.to_numpy())
    assert not np.allclose(a.to_numpy(), c.to_numpy())


@pytest.mark.comparison
def test_site_adversary_is_weaker_than_naive(fits, table):
    """Held-out Adv (3-layer MLP adversary, balanced accuracy, chance 1/3): 0.80 for Naïve and
    0.57 for the equivariant representation on this table. The margin was 0.04-0.32 over table
    seeds 4-9 (model seed 2) and model seeds 3-4 on tables 4 and 9, so 0.03 is asserted. The
    sites' age ranges differ, so an age-equivariant representation keeps some site information
    through age."""
    features, covariates, test = table
    scores = {}
    for variant, model in fits.items():
        z_train = model.transform(features[~test], covariates[~test]).to_numpy()
        z_test = model.transform(features[test], covariates[test]).to_numpy()
        scores[variant] = site_adversary(z_train, covariates.site[~test], z_test, covariates.site[test],
                                         epochs=100, seed=0)["balanced_accuracy"]
    assert scores["equivariant"] < scores["naive"] - 0.03, scores


@pytest.mark.comparison
def test_predictor_does_better_than_any_constant_guess(fits, table):
    """Balanced accuracy of the diagnosis predictor on held-out scans: every constant guess
    scores exactly 0.5, whatever the class balance. Measured 0.55-0.69 over table seeds 4-9 and
    model seeds 2-4 (0.61 here); asserted > 0.52. (A logistic regression on the log-volumes
    scores 0.67-0.78 on the same tables: the pooled representation trades some accuracy for site
    invariance; see the pooling benchmark.)"""
    features, covariates, test = table
    predicted = fits["equivariant"].predict(features[test], covariates[test])
    truth = covariates.diagnosis[test]
    assert set(predicted) <= {"AD", "CN"}
    assert balanced_accuracy_score(truth, predicted) > 0.52


def test_metrics_helpers():
    z = np.array([[0.0, 2.0, 4.0], [1.0, 1.0, 3.0]])
    assert np.allclose(minmax_normalize(z), [[0, 0.5, 1], [0, 0, 1]])
    groups_ = np.array([0, 0, 2])
    values = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    # pairs (0,2) and (1,2): |0-2| * ||(0,1)-(1,0)||^2 = 2 * 2 = 4 each, pair (0,1): 0 -> mean 8/3
    assert equivariance_gap(values, groups_) == pytest.approx(8 / 3)
    rng = np.random.default_rng(0)
    same = rng.normal(size=(200, 3))
    sites = np.repeat(["a", "b"], 100)
    assert abs(site_mmd(same, sites, normalize=False)) < 0.02
    assert site_mmd(same + (sites == "b")[:, None], sites, normalize=False) > 0.1


# ------------------------------------------------------------------------ errors
@pytest.mark.parametrize("params", [
    {"variant": "cai"}, {"group_map": "qr"}, {"mmd_on": "sites"}, {"latent_dim": 1},
    {"latent_dim": 6, "frame_vectors": 4}, {"age_bin_width": 0}, {"target": "site"}, {"target": "age"},
    {"hidden": [0]}, {"learning_rate": -1}, {"mmd_weight": float("nan")},
])
def test_bad_parameters(params):
    with pytest.raises(HarmonizerParameterError):
        EquivariantPooling(**params)


def test_input_errors(fits, table):
    features, covariates, test = table
    with pytest.raises(CovariateError, match="target covariate 'diagnosis' is missing"):
        EquivariantPooling(target="diagnosis", **FAST).fit(features, covariates.drop(columns="diagnosis"))
    with pytest.raises(NotFittedError):
        EquivariantPooling().transform(features, covariates)
    with pytest.raises(UnknownSiteError):
        fits["naive"].transform(features[:3], covariates[:3].assign(site="siteZ"))
    with pytest.raises(HarmonizerParameterError, match="no τ"):
        fits["naive"].rotations(features[:3], covariates[:3])
    # the target is needed for fit only
    z = fits["naive"].transform(features[:3], covariates[:3].drop(columns="diagnosis"))
    assert isinstance(z, pd.DataFrame) and z.shape == (3, 32)
