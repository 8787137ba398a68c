"""Masked image metrics against closed-form values."""

import numpy as np
import pytest

from bidsharmony.evaluation.images import dice, dice_per_label, psnr_in_mask, ssim_in_mask


def test_psnr_in_mask_matches_formula_and_ignores_background():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 1, (16, 16, 8))
    mask = np.zeros(reference.shape, bool)
    mask[4:12, 4:12] = True
    image = reference + 0.05
    image[~mask] += 100  # background differences must not count
    data_range = reference[mask].max() - reference[mask].min()
    assert psnr_in_mask(reference, image, mask) == pytest.approx(10 * np.log10(data_range ** 2 / 0.05 ** 2))


def test_ssim_in_mask_is_one_for_identical_and_lower_for_noisy():
    rng = np.random.default_rng(1)
    reference = rng.uniform(0, 1, (20, 20, 10))
    mask = np.ones(reference.shape, bool)
    assert ssim_in_mask(reference, reference, mask) == pytest.approx(1.0)
    noisy = reference + rng.normal(0, 0.3, reference.shape)
    assert ssim_in_mask(reference, noisy, mask) < 0.8


def test_dice_per_label():
    truth = np.array([0, 1, 1, 2, 2, 2])
    predicted = np.array([0, 1, 2, 2, 2, 1])
    scores = dice_per_label(truth, predicted, [1, 2])
    assert scores[1] == pytest.approx(0.5) and scores[2] == pytest.approx(2 * 2 / 6)
    assert dice(truth == 1, truth == 1) == 1.0
