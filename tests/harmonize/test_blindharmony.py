"""BlindHarmony: Algorithm 1 on a tiny flow trained only on the reference site's phantoms."""

import numpy as np
import pandas as pd
import pytest
import torch

from bidsharmony.images.blindharmony import (
    BlindHarmony, blind_harmonize_slices, lowfrequency_replacement, normalized_cross_correlation,
)
from bidsharmony.harmonize.errors import HarmonizerParameterError
from bidsharmony.harmonize.image_base import ImageHarmonizer, ImageSet
from bidsharmony.images.data import normalize_intensity

torch.set_num_threads(1)

#: site effects: monotone intensity maps of the site-free [0, 1] anatomy (scanner units)
SITES = {
    "ref": lambda v: 1000 * v,
    "gamma": lambda v: 700 * v ** 0.5 + 50,
    "exp": lambda v: 300 * (np.exp(2 * v) - 1),
}


def _phantom(rng, shape=(28, 28, 8)):
    """An ellipsoid 'brain' (GM rim, WM core, CSF ventricles), site-free intensities in [0, 1]."""
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    a, b = rng.uniform(0.75, 0.9, 2)
    radius = np.sqrt((i / a) ** 2 + (j / b) ** 2 + (k / 1.6) ** 2)
    mask = radius < 1
    image = np.zeros(shape, np.float32)
    image[mask] = 0.55
    white = radius < rng.uniform(0.65, 0.8)
    image[white] = 0.85
    image[(np.abs(i - rng.uniform(-0.1, 0.1)) < rng.uniform(0.1, 0.25)) & (np.abs(j) < 0.3) & white] = 0.2
    image[mask] += rng.normal(0, 0.02, mask.sum())
    return np.clip(image, 0, 1), mask


def _scans(n_per_site, seed):
    rng = np.random.default_rng(seed)
    images, masks, truth, rows = [], [], [], []
    for site, intensity_map in SITES.items():
        for s in range(n_per_site):
            clean, mask = _phantom(rng)
            images.append(np.where(mask, intensity_map(clean), 0).astype(np.float32))
            masks.append(mask)
            truth.append(clean)
            rows.append({"participant_id": f"sub-{site}{s}", "session_id": "ses-1", "site": site, "age": 50.0,
                         "sex": "F"})
    return ImageSet(images, masks, pd.DataFrame(rows), np.eye(4)), truth


def _psnr(image, truth, mask):
    return 10 * np.log10(1.0 / np.mean((image[mask] - truth[mask]) ** 2))


@pytest.fixture(scope="module")
def data():
    return _scans(6, seed=0)


@pytest.fixture(scope="module")
def model(data):
    scans, _ = data
    reference_only = scans.subset(np.asarray(scans.sites) == "ref")
    return BlindHarmony(reference_site="ref", epochs=10, random_seed=0).fit(reference_only)


@pytest.mark.comparison
@pytest.mark.parametrize("site", ["gamma", "exp"])
def test_unseen_sites_get_closer_to_the_truth(data, model, site):
    """Sites never seen in fit: PSNR to the site-free anatomy rises by at least 3 dB.

    The tiny model gains 5.2-8.8 dB per site on average over phantom seeds 0-3 (worst single
    scan 2.1 dB; the paper reports 6.8 dB on OASIS-3 with 4 × 7 steps); a mean of 3 dB leaves
    room for platform noise yet fails if the iteration only copied the source (0 dB).
    """
    scans, truth = data
    assert site not in model.sites_
    gains = []
    for k in np.flatnonzero(np.asarray(scans.sites) == site):
        image, mask = scans.images[k], scans.masks[k]
        harmonized, info = model.transform_scan(image, mask, site)
        source = normalize_intensity(image, mask)[0]
        # the reference site stores 1000 × the site-free anatomy, so /1000 is the truth's scale
        gains.append(_psnr(harmonized / 1000.0, truth[k], mask) - _psnr(source, truth[k], mask))
        assert info["ncc_with_source_min"] > 0.95
        assert np.array_equal(harmonized[~mask], image[~mask])
    assert np.mean(gains) >= 3.0


def test_iteration_keeps_ncc_and_prior_step_raises_likelihood(data, model):
    scans, _ = data
    k = int(np.flatnonzero(np.asarray(scans.sites) == "exp")[0])
    _, _, slices, brain = model._slices(scans.images[k], scans.masks[k])
    source = torch.from_numpy(slices)[:, None]
    start = torch.from_numpy(model.mean_slices_)[:, None]
    likelihood = {}
    for alpha in (0.0, 0.05):
        x, terms = blind_harmonize_slices(model.flow_, source, start, alpha=alpha, num_iterations=10)
        assert terms["ncc"].min() > 0.95
        with torch.no_grad():
            likelihood[alpha] = float(model.flow_.log_prob(x).mean())
    # shrinking z towards 0 is the prior step: it must make the result more likely under the flow
    assert likelihood[0.05] > likelihood[0.0]


def test_ncc_is_one_for_affine_copies():
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(normalized_cross_correlation(x, 3 * x + 1), torch.ones(2), atol=1e-5)


def test_only_reference_scans_are_used(data, model):
    scans, _ = data
    full = BlindHarmony(reference_site="ref", epochs=10, random_seed=0).fit(scans)
    for a, b in zip(full.flow_.parameters(), model.flow_.parameters()):
        assert torch.equal(a, b)


def test_save_load_round_trip(data, model, tmp_path):
    scans, _ = data
    image, mask = scans.images[-1], scans.masks[-1]
    loaded = ImageHarmonizer.load(model.save(tmp_path / "blindharmony"))
    assert isinstance(loaded, BlindHarmony) and loaded.get_params() == model.get_params()
    expected, expected_info = model.transform_scan(image, mask, "exp")
    got, info = loaded.transform_scan(image, mask, "exp")
    assert np.array_equal(got, expected) and info == expected_info


def test_bad_slice_size_is_a_parameter_error():
    with pytest.raises(HarmonizerParameterError, match="divisible"):
        BlindHarmony(slice_size=30, levels=2)


def test_lowfrequency_replacement():
    rng = np.random.default_rng(0)
    source, reference = rng.random((16, 16)), rng.random((16, 16)) + 2.0
    # only the mean (DC) swapped
    dc = lowfrequency_replacement(source, reference, cutoff=0.0)
    assert np.isclose(dc.mean(), reference.mean(), atol=1e-5)
    assert np.allclose(dc - dc.mean(), source - source.mean(), atol=1e-5)
    # every frequency swapped
    assert np.allclose(lowfrequency_replacement(source, reference, cutoff=2.0), reference, atol=1e-5)
