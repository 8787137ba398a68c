"""The antspyx interfaces against the ground truth of a synthetic 3 mm whole head."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest
from interfaces_scoring import dice, ras_data
from scipy import ndimage as ndi

from bidsharmony.interfaces.ants import (
    ApplyTransforms,
    AtroposSegmentation,
    BrainExtraction,
    N4BiasFieldCorrection,
    RegistrationSyN,
)


def _save_like(reference_file, data, path, dtype=np.float32) -> str:
    reference = nb.load(reference_file)
    nb.Nifti1Image(np.asarray(data, dtype=dtype), reference.affine).to_filename(path)
    return str(path)


# --------------------------------------------------------------------------- N4


def _known_bias(shape) -> np.ndarray:
    """A smooth multiplicative field, log standard deviation ~0.1 over the head."""
    centre = (np.array(shape) - 1) / 2
    x, y, z = ((np.indices(shape)[i] - centre[i]) / (shape[i] / 2) for i in range(3))
    return np.exp(0.3 * (0.8 * x - 0.5 * y + 0.6 * z + 0.5 * x * z)).astype(np.float32)


def test_n4_removes_a_known_multiplicative_bias(head, anat, tmp_path):
    # the site-free truth (no bias) times a known field, plus noise
    clean = nb.load(anat.valid)  # RAS grid of the head
    sitefree = ras_data(head.sitefree).astype(np.float32) * 1000
    bias = _known_bias(sitefree.shape)
    noisy = sitefree * bias + np.random.default_rng(0).normal(0, 10, sitefree.shape)
    biased = _save_like(anat.valid, np.clip(noisy, 0, None), tmp_path / "biased.nii.gz")
    assert clean.shape == sitefree.shape

    out = N4BiasFieldCorrection(in_file=biased, shrink_factor=3).run(cwd=str(tmp_path)).outputs
    brain = ras_data(head.mask) > 0
    estimated = np.log(nb.load(out.bias_image).get_fdata()[brain])
    true = np.log(bias[brain])
    residual = (true - true.mean()) - (estimated - estimated.mean())
    assert np.corrcoef(estimated, true)[0, 1] > 0.85
    assert residual.std() < 0.6 * true.std()
    # the corrected image is the input divided by the field
    corrected = nb.load(out.out_file).get_fdata()
    field = nb.load(out.bias_image).get_fdata()
    assert np.allclose(corrected * field, nb.load(biased).get_fdata(), rtol=1e-4, atol=1e-2)


def test_n4_keeps_the_grid_and_writes_float32(anat):
    valid, n4 = nb.load(anat.valid), nb.load(anat.n4)
    assert n4.shape == valid.shape
    assert np.array_equal(n4.affine, valid.affine)
    assert n4.get_data_dtype() == np.float32


# --------------------------------------------------------------------------- brain extraction


def test_brain_extraction_matches_the_true_mask(anat, head):
    mask = np.asanyarray(nb.load(anat.mask).dataobj)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    truth = ras_data(head.mask)
    score = dice(mask, truth)
    print(f"brain-mask Dice at 3 mm ('fast'): {score:.4f}; times {anat.seconds}")
    assert score >= 0.97
    brain = nb.load(anat.brain).get_fdata()
    assert np.array_equal(brain, nb.load(anat.n4).get_fdata() * (mask > 0))


def test_brain_extraction_with_a_head_template(tmp_path, head, anat, template):
    """The antsBrainExtraction-like path: a whole-head template and its brain map.

    The "head template" is another synthetic subject's site-free whole head with its true
    brain mask, so the path is tested on a head-to-head registration; at 6 mm to keep the
    test short.
    """
    from bidsharmony.datasets.synthetic import make_dataset

    other = make_dataset(tmp_path / "other", n_subjects=2, n_sites=1, resolution=3.0, seed=9, n_traveling=0)
    row = other.scans.iloc[1]
    head_template = _downsampled(_ras_copy(row["sitefree"], tmp_path / "tpl_head.nii.gz"), tmp_path / "tpl6.nii.gz")
    probmask = _downsampled(_ras_copy(row["mask"], tmp_path / "tpl_mask.nii.gz"), tmp_path / "tplmask6.nii.gz")
    t1w = _downsampled(anat.n4, tmp_path / "t1w6.nii.gz")
    truth_file = _downsampled(_ras_copy(head.mask, tmp_path / "truth.nii.gz"), tmp_path / "truth6.nii.gz")
    truth = nb.load(truth_file).get_fdata() > 0.5
    out = BrainExtraction(
        in_file=t1w, template=template["template"], template_mask=template["template_mask"],
        head_template=head_template, head_template_probmask=probmask, reg_quality="fast",
    ).run(cwd=str(tmp_path)).outputs  # fmt: skip
    score = dice(nb.load(out.out_mask).get_fdata(), truth)
    print(f"head-template brain-mask Dice at 6 mm: {score:.4f}")
    assert score >= 0.93
    assert "head template" in open(out.out_report).read()


# --------------------------------------------------------------------------- registration


@pytest.fixture(scope="module")
def registration(tmp_path_factory, anat, template):
    folder = tmp_path_factory.mktemp("registration")
    return RegistrationSyN(
        moving=anat.brain, moving_mask=anat.mask, fixed=template["template"],
        fixed_mask=template["template_mask"], reg_quality="fast",
    ).run(cwd=str(folder)).outputs  # fmt: skip


def _warp(tmp_path, name, image, reference, transforms, interpolation="genericLabel"):
    folder = tmp_path / name
    folder.mkdir()
    return ApplyTransforms(
        input_image=image, reference_image=reference, transforms=transforms, interpolation=interpolation
    ).run(cwd=str(folder)).outputs.output_image


def test_registration_transforms_point_the_documented_way(tmp_path, registration, anat, head, template):
    true_native = ras_data(head.mask)
    template_mask = nb.load(template["template_mask"]).get_fdata()
    # reverse: template → T1w; the template mask lands on the subject's true brain
    native = _warp(tmp_path, "to_native", template["template_mask"], anat.n4, [registration.reverse_transform])
    to_native = dice(nb.load(native).get_fdata(), true_native)
    # forward: T1w → template; the subject's true brain lands on the template mask
    true_file = _save_like(anat.n4, true_native, tmp_path / "truth.nii.gz", np.uint8)
    standard = _warp(tmp_path, "to_template", true_file, template["template"], [registration.forward_transform])
    to_template = dice(nb.load(standard).get_fdata(), template_mask)
    # the other way round must be clearly worse, or this test could not see a swap
    swapped = _warp(tmp_path, "swapped", template["template_mask"], anat.n4, [registration.forward_transform])
    wrong = dice(nb.load(swapped).get_fdata(), true_native)
    print(f"registration Dice: template→T1w {to_native:.4f}, T1w→template {to_template:.4f}, swapped {wrong:.4f}")
    assert to_native >= 0.97 and to_template >= 0.97
    assert wrong < to_native - 0.03
    # the warped image is the moving image brought through forward_transform
    warped = nb.load(registration.warped_image)
    assert warped.shape == template_mask.shape
    resampled = _warp(tmp_path, "brain", anat.brain, template["template"], [registration.forward_transform], "linear")
    inside = template_mask > 0
    assert np.corrcoef(warped.get_fdata()[inside], nb.load(resampled).get_fdata()[inside])[0, 1] > 0.99


# --------------------------------------------------------------------------- resampling


def test_label_resampling_keeps_integer_labels(anat, head, template):
    source = np.asanyarray(nb.load(template["atlas_dseg"]).dataobj)
    native_img = nb.load(anat.atlas_native)
    native = np.asanyarray(native_img.dataobj)
    assert np.issubdtype(native.dtype, np.integer)
    assert np.array_equal(native_img.affine, nb.load(anat.n4).affine)
    source_labels = set(np.unique(source)) - {0}
    native_labels = set(np.unique(native)) - {0}
    assert native_labels <= source_labels  # no blended, invented values
    assert len(native_labels) >= 0.95 * len(source_labels)
    truth = ras_data(head.atlas)
    inside = (ras_data(head.mask) > 0) & (truth > 0)
    agreement = float(np.mean(native[inside] == truth[inside]))
    print(f"atlas label agreement with the true native atlas: {agreement:.3f}")
    assert agreement >= 0.7


def test_nearest_neighbour_and_dtype_choice(tmp_path, anat, template):
    out = _warp(tmp_path, "nn", template["atlas_dseg"], anat.n4, [anat.reverse_transform], "nearestNeighbor")
    values = np.asanyarray(nb.load(out).dataobj)
    assert np.issubdtype(values.dtype, np.integer)
    assert set(np.unique(values)) <= set(np.unique(np.asanyarray(nb.load(template["atlas_dseg"]).dataobj)))
    forced = ApplyTransforms(
        input_image=template["template_mask"], reference_image=anat.n4, transforms=[anat.reverse_transform],
        interpolation="genericLabel", out_dtype="int16",
    ).run(cwd=str(tmp_path)).outputs.output_image  # fmt: skip
    assert nb.load(forced).get_data_dtype() == np.int16


def test_float_image_onto_a_uint8_grid_stays_float(tmp_path, anat):
    """antspyx casts to the reference's type; the interface must not truncate a T1w to uint8."""
    round_trip = ApplyTransforms(
        input_image=anat.n4, reference_image=anat.mask,
        transforms=[anat.reverse_transform, anat.forward_transform], interpolation="linear",
    ).run(cwd=str(tmp_path)).outputs.output_image  # fmt: skip
    img = nb.load(round_trip)
    assert img.get_data_dtype() == np.float32
    values, original = img.get_fdata(), nb.load(anat.n4).get_fdata()
    brain = nb.load(anat.mask).get_fdata() > 0
    assert values.max() > 255  # not clipped to uint8
    assert np.corrcoef(values[brain], original[brain])[0, 1] > 0.9  # T1w → template → T1w


# --------------------------------------------------------------------------- Atropos


def _medians(t1, dseg):
    return [float(np.median(t1[dseg == k])) for k in (1, 2, 3)]


def test_atropos_agrees_with_the_true_tissues(anat, head):
    dseg = np.asanyarray(nb.load(anat.dseg).dataobj)
    assert dseg.dtype == np.uint8 and set(np.unique(dseg)) <= {0, 1, 2, 3}
    assert not np.any(dseg[nb.load(anat.mask).get_fdata() == 0])
    truth = ras_data(head.dseg)
    scores = {name: dice(dseg == k, truth == k) for k, name in ((1, "CSF"), (2, "GM"), (3, "WM"))}
    print("Atropos per-class Dice at 3 mm:", {k: round(v, 3) for k, v in scores.items()})
    assert scores["GM"] >= 0.8 and scores["WM"] >= 0.75 and scores["CSF"] >= 0.55
    t1 = nb.load(anat.n4).get_fdata()
    csf, gm, wm = _medians(t1, dseg)
    assert csf < gm < wm
    probs = [nb.load(p) for p in anat.probsegs]
    assert all(p.get_data_dtype() == np.float32 for p in probs)
    stacked = np.stack([p.get_fdata() for p in probs])
    # each posterior is highest where its class was chosen
    inside = dseg > 0
    assert np.mean(np.argmax(stacked[:, inside], axis=0) + 1 == dseg[inside]) > 0.95


def test_atropos_classes_follow_intensity_not_prior_order(tmp_path, anat):
    shuffled = [anat.priors[2], anat.priors[0], anat.priors[1]]  # WM, CSF, GM
    out = AtroposSegmentation(
        in_file=anat.brain, mask_file=anat.mask, prior_probsegs=shuffled
    ).run(cwd=str(tmp_path)).outputs
    dseg = np.asanyarray(nb.load(out.out_dseg).dataobj)
    csf, gm, wm = _medians(nb.load(anat.n4).get_fdata(), dseg)
    assert csf < gm < wm
    # the GM posterior file holds GM: it is high where the hard label is GM
    gm_prob = nb.load(out.out_probsegs[1]).get_fdata()
    assert gm_prob[dseg == 2].mean() > 0.6 > gm_prob[dseg == 3].mean()


def test_atropos_without_priors_orders_classes(tmp_path, anat):
    out = AtroposSegmentation(in_file=anat.brain, mask_file=anat.mask).run(cwd=str(tmp_path)).outputs
    dseg = np.asanyarray(nb.load(out.out_dseg).dataobj)
    csf, gm, wm = _medians(nb.load(anat.n4).get_fdata(), dseg)
    assert csf < gm < wm


# --------------------------------------------------------------------------- determinism


def _ras_copy(source, path) -> str:
    """The file in RAS voxel order (synthetic truth is stored in the site's orientation)."""
    nb.as_closest_canonical(nb.load(source)).to_filename(path)
    return str(path)


def _downsampled(source, path, factor=2, order=1, dtype=np.float32) -> str:
    """A coarser copy (every ``factor``-th voxel after smoothing): tiny, fast registrations."""
    img = nb.load(source)
    data = img.get_fdata()
    if order:
        data = ndi.gaussian_filter(data, factor / 2)
    affine = img.affine.copy()
    affine[:3, :3] *= factor
    nb.Nifti1Image(data[::factor, ::factor, ::factor].astype(dtype), affine).to_filename(path)
    return str(path)


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory, anat, template):
    """6 mm versions of the brain and the template."""
    folder = tmp_path_factory.mktemp("small")
    return {
        "moving": _downsampled(anat.brain, folder / "brain.nii.gz"),
        "fixed": _downsampled(template["template"], folder / "template.nii.gz"),
        "mask": _downsampled(anat.mask, folder / "mask.nii.gz", order=0, dtype=np.uint8),
    }


def _register(tmp_path, name, pair, seed):
    folder = tmp_path / name
    folder.mkdir()
    out = RegistrationSyN(
        moving=pair["moving"], fixed=pair["fixed"], reg_quality="fast", random_seed=seed
    ).run(cwd=str(folder)).outputs
    return nb.load(out.warped_image).get_fdata()


def test_registration_is_reproducible_with_its_seed(tmp_path, small_pair):
    # seed 0 is the default and the case ANTs would take as "from the clock"
    first = _register(tmp_path, "a", small_pair, seed=0)
    again = _register(tmp_path, "b", small_pair, seed=0)
    other = _register(tmp_path, "c", small_pair, seed=7)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)  # the seed reaches the metric sampling


def test_atropos_is_reproducible(tmp_path, small_pair):
    results = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        out = AtroposSegmentation(
            in_file=small_pair["moving"], mask_file=small_pair["mask"], random_seed=3
        ).run(cwd=str(tmp_path / name)).outputs
        results.append([nb.load(p).get_fdata() for p in out.out_probsegs])
    assert all(np.array_equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("spacing, factor", [((1.0, 1.0, 1.0), 6), ((1.2, 1.2, 1.2), 5), ((0.9, 1.0, 1.2), 7),
                                             ((2.0, 2.0, 2.0), 4), ((3.75, 3.75, 3.75), 4)])
def test_automatic_n4_shrink_fits_on_a_grid_of_at_least_6_mm(spacing, factor):
    from bidsharmony.interfaces.ants import n4_shrink_factor

    assert n4_shrink_factor(spacing) == factor
    assert min(spacing) * factor >= 6.0 or factor == 4


def test_registration_levels_follow_the_voxel_size():
    """Levels are written in mm: 1 mm images stop the SyN at a 2 mm grid (shrink 2), coarse
    test images reach their own grid (shrink 1), and levels on one grid are merged."""
    from bidsharmony.interfaces.ants import REGISTRATION_PRESETS, _levels

    syn = REGISTRATION_PRESETS["fast"]["syn"]
    assert _levels(syn, 1.0) == ("60x30x10", "8x4x2", "3x2x1vox")
    assert _levels(syn, 3.0) == ("60x30x10", "3x2x1", "1.6x1x0vox")
    assert _levels(syn, 4.0) == ("60x40", "2x1", "1x0vox")
