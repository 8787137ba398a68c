"""Harmonizing Flows on traveling-subject phantoms: pretraining, adaptation, persistence, unseen sites."""

import numpy as np
import pandas as pd
import pytest
import torch

from bidsharmony.harmonize.errors import HarmonizerParameterError
from bidsharmony.images.harmonizing_flows import HarmonizingFlows, augment_slices, normalize_intensity
from bidsharmony.harmonize.image_base import ImageHarmonizer, ImageSet

torch.set_num_threads(1)

#: site effects: monotone intensity maps of the site-free [0, 1] anatomy (scanner units)
SITES = {
    "ref": lambda v: 1000 * v,
    "gamma": lambda v: 800 * v ** 2.2 + 40,
    "log": lambda v: 600 * np.log1p(4 * v),
}


def _phantom(rng, shape=(28, 28, 8)):
    """An ellipsoid 'brain' (GM rim, WM core, CSF ventricles), site-free intensities in [0, 1]."""
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    a, b = rng.uniform(0.75, 0.9, 2)
    radius = np.sqrt((i / a) ** 2 + (j / b) ** 2 + (k / 1.6) ** 2)
    mask = radius < 1
    image = np.zeros(shape, np.float32)
    image[mask] = 0.5
    white = radius < rng.uniform(0.6, 0.8)
    image[white] = 0.85
    image[(np.abs(i - rng.uniform(-0.1, 0.1)) < rng.uniform(0.1, 0.25)) & (np.abs(j) < 0.3) & white] = 0.15
    return image, mask


def _scans(n_reference=6, n_traveling=2, seed=0):
    """Reference-only subjects plus traveling subjects scanned at every site (same anatomy)."""
    rng = np.random.default_rng(seed)
    images, masks, rows, anatomy = [], [], [], {}

    def add(subject, site, clean, mask):
        noisy = np.clip(clean + rng.normal(0, 0.02, clean.shape), 0, 1)
        images.append(np.where(mask, SITES[site](noisy), 0).astype(np.float32))
        masks.append(mask)
        rows.append({"participant_id": subject, "session_id": f"ses-{site}", "site": site, "age": 50.0,
                     "sex": "F"})

    for s in range(n_reference):
        add(f"sub-R{s:02d}", "ref", *_phantom(rng))
    for t in range(n_traveling):
        anatomy[t] = _phantom(rng)
        for site in SITES:
            add(f"sub-T{t + 1:02d}", site, *anatomy[t])
    return ImageSet(images, masks, pd.DataFrame(rows), np.eye(4))


def _relative_error(image, reference, mask):
    """RMS difference inside the mask relative to the reference's intensity range (unit-free)."""
    lo, hi = np.percentile(reference[mask], [0.5, 99.5])
    return float(np.sqrt(np.mean(((image[mask] - reference[mask]) / (hi - lo)) ** 2)))


def _raw_normalized(model, image, mask):
    """The no-harmonization baseline: the scan min-max normalised, in the reference site's units."""
    lo, hi = model.reference_scale_
    return normalize_intensity(image, mask)[0] * (hi - lo) + lo


SMALL = dict(slice_size=16, num_scales=2, steps_per_scale=2, flow_channels=8, flow_epochs=20,
             harmonizer_channels=8, harmonizer_levels=3, harmonizer_epochs=60, adaptation_iterations=30,
             batch_size=8, random_seed=0)


@pytest.fixture(scope="module")
def scans():
    return _scans()


@pytest.fixture(scope="module")
def model(scans):
    return HarmonizingFlows(reference_site="ref", **SMALL).fit(scans)


def test_augmentations_differ_enough_and_keep_background():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(20, 1, 8, 8)
    brain = torch.zeros_like(x)
    brain[..., 2:6, 2:6] = 1
    x = x * brain
    y = augment_slices(x, brain, generator, dissimilarity_threshold=0.01)
    assert torch.all(y[brain == 0] == 0) and torch.all(y >= 0)
    distance = ((y - x) ** 2 * brain).flatten(1).sum(1) / 16
    assert (distance >= 0.01).float().mean() >= 0.9


def test_fit_uses_only_the_reference_site_and_pretraining_lowers_the_loss(model):
    history = model.harmonizer_history_
    assert history[-1] < 0.7 * history[0]
    assert np.isfinite(model.source_bits_per_dim_)
    assert np.isfinite(model.flow_history_).all()


@pytest.mark.comparison
def test_target_scan_is_not_made_worse_than_min_max_normalisation(scans, model):
    table = scans.covariates
    gains = []
    for site in ("gamma", "log"):
        for subject in ("sub-T01", "sub-T02"):
            ref = int(np.flatnonzero((table.participant_id == subject) & (table.site == "ref"))[0])
            k = int(np.flatnonzero((table.participant_id == subject) & (table.site == site))[0])
            mask = scans.masks[k]
            harmonized, info = model.transform_scan(scans.images[k], mask, site)
            assert info["bits_per_dim_after"] <= info["bits_per_dim_before"]
            assert info["stopping_reason"] in ("reached source bpd", "max iterations")
            raw = _relative_error(_raw_normalized(model, scans.images[k], mask), scans.images[ref], mask)
            after = _relative_error(harmonized, scans.images[ref], mask)
            gains.append(raw - after)
            assert np.array_equal(harmonized[~mask], scans.images[k][~mask])
    # Gain in relative error over min-max normalisation (raw error 0.11-0.20): 0.01-0.11 per scan
    # on this fixture, but a mean of only 0.002-0.056 (worst scan -0.021) over phantom seeds 0-3
    # and model seeds 0-2: at this size the model does no harm but does not reliably help, so
    # that, not a gain, is what is asserted (the comparison lives in the image benchmarks)
    assert np.mean(gains) > -0.005 and min(gains) > -0.03, gains


def test_save_load_round_trip_gives_identical_output(tmp_path, scans, model):
    k = int(np.flatnonzero(np.asarray(scans.sites) == "gamma")[0])
    expected, _ = model.transform_scan(scans.images[k], scans.masks[k], "gamma")
    loaded = ImageHarmonizer.load(model.save(tmp_path / "model"))
    assert isinstance(loaded, HarmonizingFlows)
    actual, _ = loaded.transform_scan(scans.images[k], scans.masks[k], "gamma")
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.comparison
def test_an_unseen_site_keeps_the_tissue_contrast_without_refitting(scans, model):
    """A site never seen in fit (an exponential intensity map): the flow stays frozen, the
    background is untouched, bits/dim does not rise, and WM > GM > CSF stays apart by more than
    a fifth of the reference intensity range (measured on phantoms 5-9, model seeds 0-1: WM-GM
    0.48-0.55, GM-CSF 0.30-0.41 of it). The error to the same anatomy in reference units is NOT
    reliably lower than min-max normalisation at this model size (5 of those 10 scans got worse),
    so it is not asserted; see the image-harmonization benchmarks."""
    rng = np.random.default_rng(5)
    clean, mask = _phantom(rng)
    image = np.where(mask, 300 * (np.exp(2 * clean) - 1), 0).astype(np.float32)
    flow_weights = [p.clone() for p in model.flow_.parameters()]
    harmonized, info = model.transform_scan(image, mask, "never-seen")
    assert "never-seen" in model._adapted
    assert all(torch.equal(a, b) for a, b in zip(flow_weights, model.flow_.parameters()))
    assert np.array_equal(harmonized[~mask], image[~mask])
    assert info["bits_per_dim_after"] <= info["bits_per_dim_before"]
    white = harmonized[mask & (clean > 0.8)].mean()
    grey = harmonized[mask & (np.abs(clean - 0.5) < 0.01)].mean()
    csf = harmonized[mask & (clean < 0.2)].mean()
    lo, hi = model.reference_scale_
    assert white - grey > 0.2 * (hi - lo) and grey - csf > 0.2 * (hi - lo), (white, grey, csf)


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(HarmonizerParameterError, match="adaptation"):
        HarmonizingFlows(adaptation="subject")
    with pytest.raises(HarmonizerParameterError, match="multiple of 4"):
        HarmonizingFlows(slice_size=18)


def test_adaptation_raises_the_flow_likelihood_and_leaves_the_pretrained_net(scans, model):
    """Eq. 6 with an unreachable target: runs to the cap and lowers the bits per dimension."""
    import copy

    k = int(np.flatnonzero(np.asarray(scans.sites) == "log")[0])
    _, _, x, brain = model._slices(scans.images[k], scans.masks[k])
    strict = copy.copy(model)
    strict.source_bits_per_dim_ = -np.inf
    strict.adaptation_iterations = 5
    before = [p.clone() for p in model.harmonizer_.parameters()]
    _, info = strict.adapt(x, brain)
    assert info["adaptation_iterations"] == 5 and info["stopping_reason"] == "max iterations"
    assert info["bits_per_dim_after"] < info["bits_per_dim_before"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.harmonizer_.parameters()))
