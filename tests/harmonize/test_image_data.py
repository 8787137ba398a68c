"""The image harmonizers' shared intensity normalisation and slice geometry."""

import json

import numpy as np
import pytest

from bidsharmony.harmonize.errors import HarmonizerInputError, HarmonizerParameterError, ModelFileError
from bidsharmony.images.data import SliceGeometry, denormalize_intensity, normalize_intensity


def _ellipsoid(shape=(20, 24, 16), centre=(9.0, 12.0, 7.0), radii=(6.0, 8.0, 5.0)):
    grid = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1


@pytest.fixture
def scan():
    rng = np.random.default_rng(0)
    mask = _ellipsoid()
    image = np.where(mask, rng.gamma(4.0, 100.0, mask.shape), rng.normal(0, 5, mask.shape)).astype(np.float32)
    return image, mask


# ---------------------------------------------------------------------- intensities
def test_normalization_maps_the_percentiles_to_0_and_1(scan):
    image, mask = scan
    normalized, (lo, hi) = normalize_intensity(image, mask, percentiles=(2, 98))
    expected_lo, expected_hi = np.percentile(image[mask].astype(np.float64), [2, 98])
    assert (lo, hi) == pytest.approx((expected_lo, expected_hi))
    inside = normalized[mask]
    assert normalized.dtype == np.float32 and inside.min() == 0 and inside.max() == 1
    # the 2 % darkest and brightest brain voxels are clipped, the rest scaled linearly
    assert np.mean(inside == 0) == pytest.approx(0.02, abs=0.002)
    assert np.mean(inside == 1) == pytest.approx(0.02, abs=0.002)
    between = mask & (image > lo) & (image < hi)
    np.testing.assert_allclose(normalized[between], (image[between] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert np.all(normalized[~mask] == 0)


def test_denormalization_undoes_unclipped_values(scan):
    image, mask = scan
    normalized, scale = normalize_intensity(image, mask)
    back = denormalize_intensity(normalized, scale)
    between = mask & (normalized > 0) & (normalized < 1)
    np.testing.assert_allclose(back[between], image[between], rtol=1e-5)
    assert back.dtype == np.float32


def test_a_constant_brain_does_not_divide_by_zero():
    mask = _ellipsoid()
    normalized, (lo, hi) = normalize_intensity(np.full(mask.shape, 7.0), mask)
    assert (lo, hi) == (7.0, 8.0) and np.all(normalized == 0)


@pytest.mark.parametrize("percentiles", [(99, 1), (-1, 50), (10, 101), (5,), "ab"])
def test_bad_percentiles_are_parameter_errors(scan, percentiles):
    with pytest.raises(HarmonizerParameterError, match="percentiles"):
        normalize_intensity(*scan, percentiles=percentiles)


def test_bad_masks_are_input_errors(scan):
    image, mask = scan
    with pytest.raises(HarmonizerInputError, match="empty"):
        normalize_intensity(image, np.zeros_like(mask))
    with pytest.raises(HarmonizerInputError, match="shape"):
        normalize_intensity(image, mask[:-1])


# ---------------------------------------------------------------------- geometry
def test_geometry_covers_the_union_of_the_masks_with_a_margin():
    a = _ellipsoid(centre=(9.0, 12.0, 7.0))
    b = _ellipsoid(centre=(11.0, 13.0, 8.0))
    geometry = SliceGeometry.from_masks([a, b], axis=2, size=(8, 8), margin_vox=2, min_brain_fraction=0.0)
    i, j, k = np.nonzero(a | b)
    assert geometry.slab == [k.min(), k.max() + 1]
    assert geometry.crop == [[i.min() - 2, min(i.max() + 3, 20)], [j.min() - 2, min(j.max() + 3, 24)]]
    # a larger fraction drops the thin caps of the slab
    capped = SliceGeometry.from_masks([a, b], axis=2, size=(8, 8), min_brain_fraction=0.5)
    area = (a | b).sum(axis=(0, 1))
    kept = np.flatnonzero(area >= 0.5 * area.max())
    assert capped.slab == [kept.min(), kept.max() + 1] and capped.slab != geometry.slab


def test_n_slices_are_centred_on_the_brain():
    mask = _ellipsoid(shape=(20, 24, 16), centre=(9.0, 12.0, 10.0), radii=(6.0, 8.0, 4.0))
    centre = int(round(np.nonzero(mask)[2].mean()))
    assert SliceGeometry.from_masks([mask], n_slices=1).slice_indices == [centre]
    assert SliceGeometry.from_masks([mask], n_slices=3).slice_indices == [centre - 1, centre, centre + 1]
    # near the grid's edge the slab is cut, not shifted off the grid
    assert SliceGeometry.from_masks([mask], n_slices=40).slab == [0, 16]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_round_trip_is_exact_where_nothing_is_resized(scan, axis):
    image, mask = scan
    probe = SliceGeometry.from_masks([mask], axis=axis, size=(4, 4))
    (r0, r1), (c0, c1) = probe.crop
    geometry = SliceGeometry.from_masks([mask], axis=axis, size=(r1 - r0, c1 - c0))
    slices = geometry.to_slices(image)
    assert slices.shape == (probe.slab[1] - probe.slab[0], r1 - r0, c1 - c0)
    np.testing.assert_array_equal(geometry.from_slices(slices, image), image)
    # pasted into zeros: the slab's crop comes back, everything else stays 0
    pasted = geometry.from_slices(slices, np.zeros_like(image))
    inside = np.zeros(image.shape, bool)
    index = [slice(None)] * 3
    index[axis] = slice(*geometry.slab)
    others = [k for k in range(3) if k != axis]
    index[others[0]], index[others[1]] = slice(r0, r1), slice(c0, c1)
    inside[tuple(index)] = True
    np.testing.assert_array_equal(pasted[inside], image[inside])
    assert np.all(pasted[~inside] == 0)


def test_resampling_reproduces_a_linear_ramp(scan):
    """Bilinear resampling is exact on linear images, so down- and up-sampling gives the ramp back."""
    _, mask = scan
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in mask.shape], indexing="ij")
    ramp = 3 * i - 2 * j + 0.5 * k
    geometry = SliceGeometry.from_masks([mask], axis=2, size=(7, 9))
    slices = geometry.to_slices(ramp)
    assert slices.shape == (len(geometry.slice_indices), 7, 9)
    back = geometry.from_slices(slices, np.zeros_like(ramp))
    (r0, r1), (c0, c1) = geometry.crop
    region = back[r0:r1, c0:c1, slice(*geometry.slab)]
    np.testing.assert_allclose(region, ramp[r0:r1, c0:c1, slice(*geometry.slab)], atol=1e-3)


def test_brain_slices_are_zero_outside_the_resampled_brain(scan):
    image, mask = scan
    geometry = SliceGeometry.from_masks([mask], size=(12, 12))
    slices, brain = geometry.to_brain_slices(image, mask)
    assert brain.dtype == bool and brain.any() and (~brain).any()
    assert np.all(slices[~brain] == 0)
    np.testing.assert_array_equal(slices[brain], geometry.to_slices(image)[brain])


def test_geometry_dict_round_trip():
    geometry = SliceGeometry.from_masks([_ellipsoid()], axis=1, size=(16, 8), margin_vox=1)
    saved = json.loads(json.dumps(geometry.to_dict()))
    assert SliceGeometry.from_dict(saved) == geometry
    with pytest.raises(ModelFileError, match="crop"):
        SliceGeometry.from_dict({k: v for k, v in saved.items() if k != "crop"})


def test_bad_geometry_input_raises_clear_errors(scan):
    image, mask = scan
    with pytest.raises(HarmonizerInputError, match="empty"):
        SliceGeometry.from_masks([np.zeros_like(mask)])
    with pytest.raises(HarmonizerInputError, match="3D brain masks"):
        SliceGeometry.from_masks([])
    with pytest.raises(HarmonizerParameterError, match="n_slices"):
        SliceGeometry.from_masks([mask], n_slices=0)
    with pytest.raises(HarmonizerParameterError, match="axis"):
        SliceGeometry.from_masks([mask], axis=3)
    geometry = SliceGeometry.from_masks([mask], size=(8, 8))
    with pytest.raises(HarmonizerInputError, match="smaller than the slice geometry"):
        geometry.to_slices(image[:5])
    with pytest.raises(HarmonizerInputError, match="slices given"):
        geometry.from_slices(np.zeros((1, 8, 8)), image)
    with pytest.raises(HarmonizerParameterError, match="start < stop"):
        SliceGeometry(2, [4, 4], [[0, 5], [0, 5]], (8, 8))
