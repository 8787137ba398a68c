"""Small synthetic whole-head T1w images with ground truth, for the interface tests.

Built from nilearn's MNI152NLin2009aSym (brain-only T1, GM, WM, shipped in its wheel): the
brain is deformed (random affine + smooth warp), given a CSF/bone/scalp/skin shell, a
multiplicative bias field and noise. Ground truth: brain mask, tissue dseg (1 CSF, 2 GM,
3 WM), the bias field and the template itself (brain-only, as the templates the pipeline
uses) with its mask and [CSF, GM, WM] probability maps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage as ndi

TISSUE_T1 = {"CSF": 35.0, "GM": 80.0, "WM": 115.0}


def _nilearn_file(kind: str) -> str:
    import nilearn

    return os.path.join(
        os.path.dirname(nilearn.__file__), "datasets", "data", f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
    )


def _resample(img: nb.Nifti1Image, voxel_mm: float, order: int = 1) -> nb.Nifti1Image:
    """Resample onto an isotropic grid covering the same box (scipy, no ITK)."""
    zooms = np.array(img.header.get_zooms()[:3])
    shape = np.ceil(np.array(img.shape[:3]) * zooms / voxel_mm).astype(int)
    affine = img.affine.copy()
    affine[:3, :3] = np.diag([voxel_mm] * 3)
    vox = np.linalg.inv(img.affine) @ affine
    data = ndi.affine_transform(
        np.asarray(img.dataobj, dtype=np.float32), vox[:3, :3], vox[:3, 3], output_shape=tuple(shape), order=order
    )
    return nb.Nifti1Image(data, affine)


@dataclass
class Template:
    t1w: str
    mask: str
    probsegs: list  # [CSF, GM, WM]


@dataclass
class Head:
    t1w: str  # whole head with bias and noise
    brain_mask: str
    dseg: str
    bias: str
    clean_t1w: str  # whole head without bias (still noisy)


def make_template(out_dir, voxel_mm: float) -> Template:
    """MNI152NLin2009aSym brain-only T1w, brain mask and [CSF, GM, WM] at ``voxel_mm``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t1 = _resample(nb.load(_nilearn_file("t1")), voxel_mm)
    gm = _resample(nb.load(_nilearn_file("gm")), voxel_mm)
    wm = _resample(nb.load(_nilearn_file("wm")), voxel_mm)
    mask = t1.get_fdata() > 20
    mask = ndi.binary_fill_holes(mask)
    gm_p = np.clip(gm.get_fdata() / 255, 0, 1) * mask
    wm_p = np.clip(wm.get_fdata() / 255, 0, 1) * mask
    csf_p = np.clip(1 - gm_p - wm_p, 0, 1) * mask
    files = {}
    for name, data, dtype in (
        ("desc-brain_T1w", t1.get_fdata() * mask, np.float32),
        ("desc-brain_mask", mask, np.uint8),
        ("label-CSF_probseg", csf_p, np.float32),
        ("label-GM_probseg", gm_p, np.float32),
        ("label-WM_probseg", wm_p, np.float32),
    ):
        path = out_dir / f"tpl-MNI152NLin2009aSym_res-{voxel_mm:g}mm_{name}.nii.gz"
        nb.Nifti1Image(np.asarray(data, dtype=dtype), t1.affine).to_filename(path)
        files[name] = str(path)
    return Template(
        files["desc-brain_T1w"],
        files["desc-brain_mask"],
        [files["label-CSF_probseg"], files["label-GM_probseg"], files["label-WM_probseg"]],
    )


def _random_warp(shape, voxel_mm, rng, amplitude_mm=3.0, smooth_mm=20.0):
    """A smooth random displacement field (voxels), one (3, *shape) array."""
    fields = []
    for _ in range(3):
        noise = rng.standard_normal(shape)
        field = ndi.gaussian_filter(noise, smooth_mm / voxel_mm)
        field *= amplitude_mm / voxel_mm / (field.std() + 1e-12)
        fields.append(field)
    return np.stack(fields)


def make_head(out_dir, template: Template, seed: int = 1, bias_strength: float = 0.25) -> Head:
    """A deformed whole-head T1w on the template grid (padded), with its ground truth."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    tpl = nb.load(template.t1w)
    voxel_mm = float(tpl.header.get_zooms()[0])
    pad = int(np.ceil(25 / voxel_mm))  # room for the scalp
    probs = [np.pad(nb.load(p).get_fdata(), pad) for p in template.probsegs]
    mask = np.pad(nb.load(template.mask).get_fdata(), pad) > 0
    affine = tpl.affine.copy()
    affine[:3, 3] -= pad * voxel_mm
    shape = mask.shape

    # Random affine about the centre + smooth warp: the subject is not the template.
    angles = np.radians(rng.uniform(-8, 8, 3))
    scale = rng.uniform(0.92, 1.06, 3)
    rx, ry, rz = angles
    rot = (
        np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
        @ np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
        @ np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    )
    matrix = rot @ np.diag(scale)
    centre = (np.array(shape) - 1) / 2
    shift = rng.uniform(-4, 4, 3) / voxel_mm
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    warp = _random_warp(shape, voxel_mm, rng).reshape(3, -1)
    coords = (matrix @ (grid - centre[:, None])) + centre[:, None] + shift[:, None] + warp

    def move(volume, order=1):
        return ndi.map_coordinates(volume, coords, order=order, mode="constant").reshape(shape)

    csf, gm, wm = (move(p) for p in probs)
    brain = move(mask.astype(np.float32)) > 0.5
    csf, gm, wm = (np.where(brain, p, 0) for p in (csf, gm, wm))
    total = csf + gm + wm
    total[total == 0] = 1
    csf, gm, wm = (np.where(brain, p / total, 0) for p in (csf, gm, wm))
    csf[brain & (csf + gm + wm == 0)] = 1
    dseg = np.zeros(shape, np.uint8)
    dseg[brain] = 1 + np.argmax(np.stack([csf, gm, wm]), axis=0)[brain]

    # Shell outside the brain, by distance (mm): thin CSF, bone, scalp fat, skin.
    depth = ndi.distance_transform_edt(~brain, sampling=voxel_mm)
    image = TISSUE_T1["CSF"] * csf + TISSUE_T1["GM"] * gm + TISSUE_T1["WM"] * wm
    shell = [(2.0, 30.0), (7.0, 12.0), (12.0, 105.0), (14.0, 60.0)]
    inner = 0.0
    for outer, value in shell:
        image[(depth > inner) & (depth <= outer)] = value
        inner = outer
    image = ndi.gaussian_filter(image, 0.5)
    image += rng.normal(0, 2.5, shape)
    image = np.clip(image, 0, None).astype(np.float32)

    # Smooth multiplicative bias: exp of a linear + quadratic field.
    x, y, z = (np.indices(shape) - centre.reshape(3, 1, 1, 1)) / (np.array(shape).reshape(3, 1, 1, 1) / 2)
    log_bias = bias_strength * (0.8 * x - 0.5 * y + 0.6 * z - 0.4 * x * z)
    bias = np.exp(log_bias).astype(np.float32)

    files = {}
    for name, data, dtype in (
        ("T1w", image * bias, np.float32),
        ("desc-clean_T1w", image, np.float32),
        ("desc-brain_mask", brain, np.uint8),
        ("dseg", dseg, np.uint8),
        ("desc-bias_T1w", bias, np.float32),
    ):
        path = out_dir / f"sub-{seed:02d}_{name}.nii.gz"
        nb.Nifti1Image(np.asarray(data, dtype=dtype), affine).to_filename(path)
        files[name] = str(path)
    return Head(files["T1w"], files["desc-brain_mask"], files["dseg"], files["desc-bias_T1w"], files["desc-clean_T1w"])


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))
