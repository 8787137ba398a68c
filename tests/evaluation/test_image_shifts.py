"""Scanner shifts with known truth (issue 22, point 1): each shift does what it says."""

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from bidsharmony.evaluation import image_shifts as shifts
from bidsharmony.harmonize.image_base import ImageSet
from bidsharmony.images.histogram import HistogramMatching

SHAPE = (28, 32, 28)
LEVELS = {1: 150.0, 2: 550.0, 3: 850.0}


def phantom(seed, noise=10.0):
    """An ellipsoid 'brain' of interleaved CSF/GM/WM blobs (1, 2, 3) on the reference scale."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    mask = sum(g**2 for g in grid) < 0.9
    field = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.5)
    cuts = np.quantile(field[mask], [0.2, 0.55])  # 20 % CSF, 35 % GM, 45 % WM
    labels = np.where(mask, 1 + (field > cuts[0]) + (field > cuts[1]), 0).astype(np.uint8)
    image = np.vectorize(LEVELS.get, otypes=[float])(np.maximum(labels, 1)) + rng.normal(0, noise, SHAPE)
    return np.where(mask, image, 0.0).astype(np.float32), mask, labels


@pytest.fixture(params=[0, 1, 2])
def seed(request):
    return request.param


def test_monotone_shift_keeps_every_voxels_rank_but_changes_intensities(seed):
    image, mask, _ = phantom(seed)
    rng = np.random.default_rng(seed)
    for family in ("gamma", "exp", "log"):
        params = shifts.draw_shift("monotone", rng, family=family)
        shifted = shifts.apply_shift(image, mask, params, rng)
        order = np.argsort(image[mask], kind="stable")
        assert np.all(np.diff(shifted[mask][order]) >= 0), family
        assert np.mean(np.abs(shifted[mask] - image[mask])) > 0.02 * image[mask].mean(), family
        assert np.all(shifted[~mask] == 0)


def test_contrast_shift_moves_the_gm_wm_ratio_by_the_requested_factor(seed):
    image, mask, labels = phantom(seed)
    rng = np.random.default_rng(seed)
    params = shifts.draw_shift("contrast", rng)
    before = shifts.tissue_mean_ratios(image, labels, mask)
    shifted = shifts.apply_shift(image, mask, params, rng, tissues=labels)
    after = shifts.tissue_mean_ratios(shifted, labels, mask)
    factors = params["factors"]
    assert after["GM/WM"] / before["GM/WM"] == pytest.approx(factors["GM"] / factors["WM"], rel=1e-5)
    assert after["CSF/WM"] / before["CSF/WM"] == pytest.approx(factors["CSF"] / factors["WM"], rel=1e-5)
    assert abs(np.log(factors["GM"] / factors["WM"])) >= np.log(1.1) - 1e-9  # never a near-identity draw
    # with soft posteriors (a mixture fitted on the image) the ratio moves by about the same factor
    posteriors = shifts.fit_tissue_model(image, mask, random_state=seed).posteriors(image, mask)
    soft = shifts.tissue_mean_ratios(shifts.contrast_shift(image, mask, posteriors, factors), labels, mask)
    assert soft["GM/WM"] / before["GM/WM"] == pytest.approx(factors["GM"] / factors["WM"], rel=0.01)


def test_contrast_shift_is_not_a_global_monotone_map():
    image, mask, labels = phantom(0, noise=60.0)  # GM and WM intensities overlap
    shifted = shifts.contrast_shift(image, mask, labels, {"CSF": 1.0, "GM": 1.25, "WM": 0.9})
    order = np.argsort(image[mask], kind="stable")
    assert np.any(np.diff(shifted[mask][order]) < 0)


def test_bias_field_has_the_requested_amplitude_and_keeps_tissue_ratios(seed):
    image, mask, labels = phantom(seed)
    for amplitude in (0.05, 0.2):
        params = shifts.draw_shift("bias", np.random.default_rng(seed), amplitude=amplitude)
        field = shifts.bias_field(SHAPE, mask, amplitude, np.random.default_rng(params["field_seed"]))
        inside = field[mask]
        assert (inside.max() - inside.min()) / (inside.max() + inside.min()) == pytest.approx(amplitude, rel=1e-9)
        assert inside.max() * inside.min() == pytest.approx(1.0, rel=1e-9)
        # smooth: neighbouring voxels differ by a small fraction of the total range
        assert np.abs(np.diff(field, axis=0))[mask[1:]].max() < 0.25 * (inside.max() - inside.min())
        shifted = shifts.apply_shift(image, mask, dict(params, gain=1.0), np.random.default_rng(seed))
        assert np.allclose(shifted[mask], (image * field)[mask], rtol=1e-5)
        before, after = (shifts.tissue_mean_ratios(x, labels, mask) for x in (image, shifted))
        assert after["GM/WM"] == pytest.approx(before["GM/WM"], rel=0.03)
    assert np.all(shifts.bias_field(SHAPE, mask, 0.0, np.random.default_rng(0)) == 1.0)


@pytest.mark.parametrize("noise", ["rician", "gaussian"])
def test_blur_noise_raises_the_noise_sd_by_the_requested_amount(noise, seed):
    flat = np.where(phantom(seed)[1], 500.0, 0.0)
    mask = flat > 0
    shifted = shifts.blur_noise_shift(flat, mask, 3.0, 0.04, np.random.default_rng(seed), noise=noise)
    # normalised convolution: a flat brain stays flat (its edge is not darkened by the background)
    blurred = shifts.blur_noise_shift(flat, mask, 3.0, 0.0, np.random.default_rng(seed))
    assert np.allclose(blurred[mask], 500.0, rtol=1e-6)
    assert np.std(shifted[mask]) == pytest.approx(0.04 * 500.0, rel=0.05)


def test_blur_noise_lowers_ssim_more_with_more_blur_and_noise(seed):
    image, mask, _ = phantom(seed, noise=0.0)
    rng = np.random.default_rng(seed)
    assert shifts.ssim_in_mask(image, image, mask) == pytest.approx(1.0)
    mild = shifts.blur_noise_shift(image, mask, 2.0, 0.01, rng)
    strong = shifts.blur_noise_shift(image, mask, 4.0, 0.05, rng)
    ssim_mild, ssim_strong = (shifts.ssim_in_mask(image, x, mask) for x in (mild, strong))
    blur_only = shifts.ssim_in_mask(image, shifts.blur_noise_shift(image, mask, 4.0, 0.0, rng), mask)
    noise_only = shifts.ssim_in_mask(image, shifts.blur_noise_shift(image, mask, 0.0, 0.05, rng), mask)
    assert ssim_strong < min(blur_only, noise_only) and max(blur_only, noise_only, ssim_mild) < 0.999
    assert ssim_strong < 0.95
    assert shifts.psnr_in_mask(image, strong, mask) < shifts.psnr_in_mask(image, mild, mask)


def test_psnr_of_an_image_with_itself_is_infinite():
    image, mask, _ = phantom(0)
    with np.errstate(divide="ignore"):
        assert np.isinf(shifts.psnr_in_mask(image, image, mask))


def test_histogram_matching_undoes_a_monotone_shift_but_not_a_contrast_shift(seed):
    reference = [phantom(100 + k) for k in range(4)]
    image, mask, labels = phantom(seed)
    rng = np.random.default_rng(seed)
    sites = {"ref": [r[0] for r in reference]}
    monotone = shifts.apply_shift(image, mask, shifts.draw_shift("monotone", rng), rng)
    contrast = shifts.apply_shift(image, mask, shifts.draw_shift("contrast", rng, gm_change=None,
                                                                 factors={"CSF": 1.0, "GM": 1.2, "WM": 0.95}),
                                  rng, tissues=labels)
    scans = ImageSet(sites["ref"], [r[1] for r in reference],
                     pd.DataFrame({"participant_id": [f"sub-{k}" for k in range(4)], "site": "ref"}),
                     np.eye(4))
    model = HistogramMatching(reference_site="ref").fit(scans)
    scores = {}
    for name, shifted in (("monotone", monotone), ("contrast", contrast)):
        harmonized, _ = model.transform_scan(shifted, mask, site="other")
        scores[name] = (shifts.psnr_in_mask(image, shifted, mask), shifts.psnr_in_mask(image, harmonized, mask))
    assert scores["monotone"][1] > 28.0 and scores["monotone"][1] > scores["monotone"][0] + 5.0
    assert scores["contrast"][1] < scores["monotone"][1] - 6.0


def test_normalisation_puts_csf_and_wm_on_the_reference_levels(seed):
    image, mask, labels = phantom(seed)
    scanner = 3.7 * image + 120.0
    normalised = shifts.normalize_to_reference_scale(scanner, mask, labels)
    for label, level in ((1, 150.0), (3, 850.0)):
        assert normalised[labels == label].mean() == pytest.approx(level, rel=1e-5)
    with pytest.raises(ValueError, match="WM mean"):
        shifts.normalize_to_reference_scale(-scanner, mask, labels)


def test_tissue_volumes_agree_with_themselves_and_move_under_a_contrast_shift(seed):
    image, mask, labels = phantom(seed)
    model = shifts.fit_tissue_model(image, mask, random_state=seed)
    own = model.labels(image, mask)
    assert np.mean(own[mask] == labels[mask]) > 0.98  # the mixture finds the phantom's tissues
    assert shifts.tissue_volume_errors(own, own)["mean_abs"] == 0.0
    darker_gm = shifts.contrast_shift(image, mask, labels, {"CSF": 1.0, "GM": 0.5, "WM": 1.0})
    errors = shifts.score_image(image, darker_gm, mask, model, own)
    assert errors["volume_error_CSF"] > 20.0 and errors["volume_error_GM"] < -20.0
    assert np.isfinite(errors["psnr"]) and errors["ssim"] < 1.0


def test_draws_are_reproducible_and_within_their_ranges():
    for kind in shifts.SHIFT_KINDS:
        a = shifts.draw_shift(kind, np.random.default_rng(5))
        assert a == shifts.draw_shift(kind, np.random.default_rng(5))
        low, high = shifts.SHIFT_RANGES[kind]["gain"]
        assert low <= a["gain"] <= high
    with pytest.raises(ValueError, match="kind"):
        shifts.draw_shift("warp", np.random.default_rng(0))
    image, mask, _ = phantom(0)
    with pytest.raises(ValueError, match="tissues"):
        shifts.apply_shift(image, mask, shifts.draw_shift("contrast", np.random.default_rng(0)),
                           np.random.default_rng(0))
