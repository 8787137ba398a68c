"""The synthetic head generator: one subject's true labels and site-free whole-head image on
one grid, made from the MNI152NLin2009aSym template (pose, scale, warp, atrophy, a head)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ...morphometry import read_label_table
from .population import REGIONS, Subject

TEMPLATE = "MNI152NLin2009aSym"
ATLAS = "Neuromorphometrics"
FOV_MM = np.array([208.0, 256.0, 232.0])  # x (L-R), y (P-A), z (I-S): a whole adult head
#: Site-free T1w intensities (WM-like ~0.85, fat brightest, bone darkest).
INTENSITY = {"CSF": 0.15, "GM": 0.55, "WM": 0.85, "skull": 0.05, "marrow": 0.6,
             "fat": 1.0, "skin": 0.45, "muscle": 0.4}
_MTL = ("Hippocampus", "Amygdala", "Ent_entorhinal_area", "PHG_parahippocampal_gyrus",
        "TMP_temporal_pole")


def _sample(volume: np.ndarray, world_to_voxel: np.ndarray, points: np.ndarray, order: int) -> np.ndarray:
    """Values of ``volume`` at world ``points`` (n, 3); 0 outside."""
    from scipy import ndimage

    coords = world_to_voxel[:3, :3] @ points.T + world_to_voxel[:3, 3:]
    return ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0.0, prefilter=False)


def _cosine_field(coefs: np.ndarray, axes: list[np.ndarray], extent: np.ndarray) -> np.ndarray:
    """Smooth field ``sum c_ijk cos(pi i x) cos(pi j y) cos(pi k z)`` on a regular grid.

    ``axes`` hold the world coordinates along each grid axis and ``extent`` the box the
    basis spans, so the same coefficients give the same physical field on any grid (a
    traveling subject keeps its anatomy at every site). Separable: O(voxels x terms/axis).
    """
    bases = []
    for axis, coord, length in zip(range(3), axes, extent):
        unit = (coord + length / 2.0) / length
        bases.append(np.cos(np.pi * np.outer(unit, np.arange(coefs.shape[axis]))))
    bx, by, bz = bases
    partial = np.tensordot(coefs, bz, axes=([2], [1]))  # (i, j, z)
    partial = np.tensordot(partial, by, axes=([1], [1]))  # (i, z, y)
    return np.tensordot(bx, partial, axes=([1], [0])).transpose(0, 2, 1)  # (x, y, z)


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation matrix from (x, y, z) Euler angles in degrees."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _layers(distance: np.ndarray, bounds: list[float], values: list[float], voxel_mm: float) -> np.ndarray:
    """Partial-volume profile of concentric layers.

    ``values[i]`` holds between ``bounds[i-1]`` and ``bounds[i]``; a voxel spanning
    ``distance ± voxel/2`` takes the length-weighted mean of the layers it crosses (a box
    filter along the distance), so layers thinner than a voxel still darken or brighten it.
    """
    out = np.full(distance.shape, values[0], dtype=np.float32)
    for bound, before, after in zip(bounds, values[:-1], values[1:]):
        beyond = np.clip((distance - bound) / voxel_mm + 0.5, 0.0, 1.0)
        out += np.float32(after - before) * beyond.astype(np.float32)
    return out


class TemplateModel:
    """Template arrays the subjects are made from, at one TemplateFlow resolution."""

    def __init__(self, resolution: int = 2):
        import nibabel as nb

        from ...templates import ensure_offline_cache, get_atlas, get_template

        ensure_offline_cache(resolutions=(resolution,))
        query = {"resolution": resolution}
        mask_img = nb.load(get_template(TEMPLATE, desc="brain", suffix="mask", **query))
        self.resolution = float(resolution)
        self.affine = mask_img.affine
        self.world_to_voxel = np.linalg.inv(self.affine)
        self.mask = np.asanyarray(mask_img.dataobj) > 0
        self.gm, self.wm = (
            nb.load(get_template(TEMPLATE, label=t, suffix="probseg", **query)).get_fdata(dtype=np.float32)
            for t in ("GM", "WM")
        )
        dseg, table = get_atlas(ATLAS, TEMPLATE, resolution)
        self.atlas = np.asanyarray(nb.load(dseg).dataobj).astype(np.int16)
        self.labels = read_label_table(table)
        self.label_table = table
        self._smoothed: dict[float, tuple] = {}

    def _ids(self, names) -> list[int]:
        index = {name: i for i, name in self.labels.items()}
        return [index[n] for n in names if n in index]

    def _world(self, voxels: np.ndarray) -> np.ndarray:
        return voxels @ self.affine[:3, :3].T + self.affine[:3, 3]

    @cached_property
    def brain_box(self) -> tuple[np.ndarray, np.ndarray]:
        """World bounding box of the brain mask."""
        world = self._world(np.argwhere(self.mask).astype(float))
        return world.min(0), world.max(0)

    @cached_property
    def centre(self) -> np.ndarray:
        return self._world(np.argwhere(self.mask).astype(float)).mean(0)

    @cached_property
    def region_shapes(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{region: (centroid, inverse covariance of its contraction bump)}`` in mm."""
        shapes = {}
        for region in REGIONS:
            voxels = np.argwhere(np.isin(self.atlas, self._ids(region.labels))).astype(float)
            world = self._world(voxels)
            # a Gaussian bump 2.5 sd wide covers an ellipsoid region (semi-axis ~2.2 sd)
            cov = np.cov(world.T) * 2.5**2 + np.eye(3) * self.resolution**2
            shapes[region.key] = (world.mean(0), np.linalg.inv(cov))
        return shapes

    @cached_property
    def mtl_weight(self) -> np.ndarray:
        """Smooth 0-1 weight of the medial temporal lobe (where AD thins GM the most)."""
        from scipy import ndimage

        names = [f"{side}_{n}" for side in ("Left", "Right") for n in _MTL]
        weight = ndimage.gaussian_filter(
            np.isin(self.atlas, self._ids(names)).astype(np.float32), 3.0 / self.resolution
        )
        return weight / max(float(weight.max()), 1e-6)

    def smoothed(self, voxel_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mask, GM, WM) as floats, anti-aliased for sampling at ``voxel_mm``."""
        from scipy import ndimage

        from ...templates import antialias_sigma

        key = round(float(voxel_mm), 4)
        if key not in self._smoothed:
            sigma = antialias_sigma(self.resolution, voxel_mm) / self.resolution
            maps = [self.mask.astype(np.float32), self.gm, self.wm]
            if sigma > 0.05:
                maps = [ndimage.gaussian_filter(m, sigma, mode="constant") for m in maps]
            self._smoothed[key] = tuple(maps)
        return self._smoothed[key]


@dataclass
class Grid:
    """A RAS voxel grid in scanner coordinates (stored orientation is applied at writing)."""

    voxel_mm: float

    @cached_property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(round(f / self.voxel_mm)) for f in FOV_MM)

    @cached_property
    def affine(self) -> np.ndarray:
        affine = np.diag([self.voxel_mm] * 3 + [1.0])
        affine[:3, 3] = -(np.array(self.shape) - 1) * self.voxel_mm / 2.0  # centred on isocentre
        return affine

    @cached_property
    def axes(self) -> list[np.ndarray]:
        return [self.affine[i, 3] + self.voxel_mm * np.arange(n) for i, n in enumerate(self.shape)]

    def points(self) -> np.ndarray:
        """World coordinates of every voxel, (n, 3) in C order."""
        return np.stack(np.meshgrid(*self.axes, indexing="ij"), -1).reshape(-1, 3)


@dataclass
class Anatomy:
    """One subject on one grid: true labels and the site-free image."""

    grid: Grid
    mask: np.ndarray  # bool
    tissues: np.ndarray  # uint8, morphometry.TISSUE_LABELS
    atlas: np.ndarray  # int16
    sitefree: np.ndarray  # float32, whole head
    head: np.ndarray  # bool


#: Where the subject's brain centre sits in the scanner (mm); leaves room for the neck below.
_BRAIN_POSITION = np.array([0.0, -6.0, 8.0])


def _to_template(subject: Subject, model: TemplateModel, grid: Grid) -> np.ndarray:
    """Template coordinates (n, 3) of every voxel before atrophy: warp, then pose and scale."""
    warp = np.stack([_cosine_field(c, grid.axes, FOV_MM) for c in subject.warp_coefs], -1)
    scanner = grid.points() + warp.reshape(-1, 3)
    rotation = _rotation(subject.pose_angles)
    centred = scanner - (_BRAIN_POSITION + subject.pose_shift)
    return centred @ rotation / subject.brain_scale + model.centre  # R^T x, row-vector form


def _atrophy(subject: Subject, model: TemplateModel, points: np.ndarray) -> np.ndarray:
    """Pull-back through regional contraction (and ventricular expansion) fields.

    Sampling the template at ``c + (1 + k w(x)) (x - c)`` with a Gaussian bump ``w`` makes
    the region ``(1 + k)^3`` times smaller near ``c`` (larger if ``k < 0``); ``k > -1`` and
    the bump's shape keep the map one-to-one.
    """
    out = points.copy()
    for region in REGIONS:
        change = subject.region_change[region.key]
        k = (1 + change) ** (-1 / 3) - 1 if region.expand else (1 - change) ** (-1 / 3) - 1
        centre, precision = model.region_shapes[region.key]
        offset = points - centre
        weight = np.exp(-0.5 * ((offset @ precision) * offset).sum(axis=1))
        out += (k * weight)[:, None] * offset
    return out


def _brain(subject: Subject, model: TemplateModel, grid: Grid, template_points: np.ndarray):
    """True mask, tissue classes, atlas labels, soft mask and brain intensity on ``grid``."""
    low, high = model.brain_box
    inside = np.all((template_points > low - 4) & (template_points < high + 4), axis=1)
    pre = template_points[inside]
    post = _atrophy(subject, model, pre)
    mask_f, gm_f, wm_f = model.smoothed(grid.voxel_mm)
    w2v = model.world_to_voxel
    # ICV does not shrink with atrophy: the mask follows the pre-atrophy map, and whatever
    # atrophy pulls in from outside the template brain becomes CSF.
    soft = np.clip(_sample(mask_f, w2v, pre, 1), 0, 1)
    thinning = subject.gm_thinning + subject.mtl_thinning * _sample(model.mtl_weight, w2v, post, 1)
    gm = _sample(gm_f, w2v, post, 1) * (1 - np.clip(thinning, 0, 0.8))
    wm = _sample(wm_f, w2v, post, 1)
    total = np.maximum(gm + wm, 1.0)
    gm, wm = gm / total, wm / total
    csf = 1.0 - gm - wm
    inmask = soft >= 0.5
    tissue = np.where(inmask, 1 + np.argmax(np.stack([csf, gm, wm]), axis=0), 0)
    atlas = np.where(inmask, _sample(model.atlas, w2v, post, 0), 0)
    intensity = csf * INTENSITY["CSF"] + gm * INTENSITY["GM"] + wm * INTENSITY["WM"]

    def full(values, dtype):
        out = np.zeros(int(np.prod(grid.shape)), dtype=dtype)
        out[inside] = values
        return out.reshape(grid.shape)

    return (full(inmask, bool), full(tissue, np.uint8), full(atlas, np.int16),
            full(soft, np.float32), full(intensity, np.float32))


def _head(subject: Subject, grid: Grid, mask: np.ndarray, template_points: np.ndarray):
    """Site-free head intensities outside the brain and the head mask.

    Layers by distance from the brain: CSF rim, inner table (dark), marrow (bright), outer
    table (dark), fat (bright), skin; their thickness varies smoothly over the head. A neck
    (muscle with a fat rim) hangs below.
    """
    from scipy import ndimage

    layers = subject.layers_mm
    order = ["csf_rim", "inner_table", "marrow", "outer_table", "fat", "skin"]
    modulation = 1.0 + _cosine_field(subject.thickness_coefs, grid.axes, FOV_MM)
    scale = np.clip(modulation, 0.6, 1.4) * subject.head_scale / subject.brain_scale
    # distance from the brain surface, half a voxel outside the last brain voxel's centre
    edt = ndimage.distance_transform_edt(~mask, sampling=[grid.voxel_mm] * 3)
    distance = (edt - grid.voxel_mm / 2) / scale
    bounds = list(np.cumsum([layers[n] for n in order]))
    values = [INTENSITY["CSF"], INTENSITY["skull"], INTENSITY["marrow"], INTENSITY["skull"],
              INTENSITY["fat"], INTENSITY["skin"], 0.0]
    shell = _layers(distance, bounds, values, grid.voxel_mm)
    # neck: elliptic cylinder below the temporal lobes, in template coordinates
    t = template_points.reshape(*grid.shape, 3)
    radius = np.sqrt((t[..., 0] / (52 * subject.head_scale)) ** 2
                     + ((t[..., 1] + 25) / (58 * subject.head_scale)) ** 2)
    neck = (radius < 1.0) & (t[..., 2] < -40) & (distance > bounds[3])
    rim_mm = (1.0 - radius) * 52 * subject.head_scale
    shell = np.where(neck, np.where(rim_mm < 5.0, INTENSITY["fat"], INTENSITY["muscle"]), shell)
    head = (distance <= bounds[-1]) | neck | mask
    return shell.astype(np.float32), head


def make_anatomy(subject: Subject, model: TemplateModel, grid: Grid) -> Anatomy:
    """A subject's true labels and site-free whole-head image on one grid."""
    points = _to_template(subject, model, grid)
    mask, tissues, atlas, soft, brain = _brain(subject, model, grid, points)
    shell, head = _head(subject, grid, mask, points)
    sitefree = (soft * brain + (1 - soft) * shell).astype(np.float32)
    return Anatomy(grid, mask, tissues, atlas, sitefree, head)
