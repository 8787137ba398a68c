"""The intensity/morphology steps of brain extraction."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest
from interfaces_scoring import dice, ras_data
from scipy import ndimage as ndi

from bidsharmony.interfaces import _brainmask as bm


@pytest.mark.parametrize("radius", [2.0, 5.0, 9.0])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 2.0, 2.5)])
def test_distance_transform_morphology_equals_the_ball_element(radius, spacing):
    blobs = ndi.gaussian_filter(np.random.default_rng(0).random((40, 44, 38)), 3) > 0.5
    element = bm.ball(radius, spacing)
    assert np.array_equal(bm.dilate(blobs, radius, spacing), ndi.binary_dilation(blobs, element))
    assert np.array_equal(bm.erode(blobs, radius, spacing), ndi.binary_erosion(blobs, element))


def test_kmeans_classes_are_sorted_and_found():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(m, 1, 500) for m in (50, 10, 30)])
    means, labels = bm.kmeans_1d(values, 3)
    assert np.allclose(means, [10, 30, 50], atol=0.5)
    assert np.array_equal(np.bincount(labels), [500, 500, 500])


def test_coarse_grid_round_trip_keeps_the_shape():
    mask = np.zeros((21, 22, 23), bool)
    mask[5:15, 6:16, 7:17] = True
    coarse = bm._block_mean(mask.astype(np.float32), 2) > 0.5
    assert bm._block_repeat(coarse, 2, mask.shape).shape == mask.shape


def test_head_and_crude_brain_masks_on_a_synthetic_head(anat, head):
    img = nb.load(anat.n4)
    data, spacing = img.get_fdata(dtype=np.float32), img.header.get_zooms()[:3]
    truth = ras_data(head.mask) > 0
    whole_head = bm.head_mask(data, spacing)
    assert np.all(whole_head[truth])  # the brain is inside the head
    assert whole_head.sum() > 1.5 * truth.sum()  # and the head is more than the brain
    crude = bm.crude_brain_mask(data, spacing)
    # only the start of the registration: it must sit on the brain, not match it
    assert dice(crude, truth) > 0.85
