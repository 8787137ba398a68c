"""Synthetic multi-site scans already in template space, with their truth.

The image harmonizers work on what the participant level writes: T1w images resampled to a
TemplateFlow template, after bias correction, with brain masks. This module makes such scans
directly from the synthetic dataset's subjects and sites (:mod:`.synthetic`), without running
registration: every subject is drawn on the template grid with no pose, unit brain scale and a
small residual warp (what a good registration leaves), and every site's intensity map and noise
applied. Traveling subjects are imaged at every site, so the harmonized scan of a subject can be
compared with the same subject's reference-site scan and with its site-free image.

Tests, benchmarks and the demo of the image harmonizers use it::

    data = make_template_scans(n_subjects=12, n_sites=3, n_traveling=2, resolution=4)
    harmonizer.fit(data.scans)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pandas as pd

from . import synthetic
from ..morphometry import TISSUE_LABELS

#: Fraction of the subject's nonlinear shape difference left after registration.
RESIDUAL_WARP = 0.25
_BRAIN_TISSUES = [label for label, name in TISSUE_LABELS.items() if name in ("GM", "WM")]
_VENTRICLES = ("Lateral_Ventricle", "Inf_Lat_Vent", "3rd_Ventricle", "4th_Ventricle")


@dataclass
class TemplateGrid(synthetic.Grid):
    """The template's own voxel grid (instead of a scanner field of view)."""

    template_shape: tuple = ()
    template_affine: np.ndarray | None = None

    @cached_property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.template_shape)

    @cached_property
    def affine(self) -> np.ndarray:
        return np.asarray(self.template_affine, dtype=float)


@dataclass
class TemplateScans:
    """Template-space scans and what is known about them.

    Attributes
    ----------
    scans : bidsharmony.harmonize.image_base.ImageSet
        One scan per subject and site (traveling subjects have one per site); covariates
        ``participant_id, session_id, site, age, sex, diagnosis, traveling``.
    sitefree : list of numpy.ndarray
        The site-free image of each scan (the anatomy before any scanner effect).
    tissues : list of numpy.ndarray
        True tissue labels of each scan (:data:`bidsharmony.morphometry.TISSUE_LABELS`).
    truth : pandas.DataFrame
        Per scan: ``brain_volume_mm3`` (GM + WM), ``ventricle_volume_mm3``, ``icv_mm3``.
    sites : list of dict
        True site parameters (:func:`.synthetic.make_sites`).
    """

    scans: object
    sitefree: list
    tissues: list
    truth: pd.DataFrame
    sites: list

    def traveler_rows(self, participant_id: str) -> dict[str, int]:
        """``{site: row}`` of the scans of one traveling subject."""
        table = self.scans.covariates
        rows = np.flatnonzero(table["participant_id"].to_numpy() == participant_id)
        return {str(table["site"].iloc[r]): int(r) for r in rows}


def _registered(subject: synthetic.Subject, model: synthetic.TemplateModel) -> synthetic.Subject:
    """The subject as seen after registration to the template: no pose, no scale, a small warp."""
    return replace(
        subject,
        pose_angles=np.zeros(3),
        pose_shift=model.centre - synthetic._BRAIN_POSITION,
        brain_scale=1.0,
        head_scale=subject.head_scale / subject.brain_scale,
        warp_coefs=subject.warp_coefs * RESIDUAL_WARP,
    )


def _without_bias(site: dict) -> dict:
    """A site as seen after N4: its bias field removed."""
    bias = dict(site["bias"], coefficients=[0.0] * len(site["bias"]["coefficients"]))
    return dict(site, bias=bias)


def make_template_scans(
    n_subjects: int = 12,
    n_sites: int = 3,
    n_traveling: int = 2,
    resolution: int = 4,
    seed: int = 0,
    bias: bool = False,
) -> TemplateScans:
    """Simulate template-space, bias-corrected T1w scans from several sites.

    Parameters
    ----------
    n_subjects : int
        Single-site subjects, spread over the sites (as in :func:`.synthetic.make_dataset`).
    n_sites : int
        Number of sites.
    n_traveling : int
        Subjects scanned at every site (session ``ses-<site>``).
    resolution : int
        TemplateFlow resolution of the grid (1, 2 or 4 mm; the offline cache must hold it).
    seed : int
        Seed of the subjects, sites and noise; same seed → identical scans.
    bias : bool
        Keep each site's bias field (as if N4 had not run); default: removed.

    Returns
    -------
    TemplateScans
    """
    from ..harmonize.image_base import ImageSet

    model = synthetic.TemplateModel(resolution)
    grid = TemplateGrid(float(resolution), template_shape=model.mask.shape, template_affine=model.affine)
    sites = synthetic.make_sites(n_sites, float(resolution), seed, vary_geometry=False)
    by_name = {s["name"]: (s if bias else _without_bias(s)) for s in sites}
    ventricle_ids = [i for i, name in model.labels.items() if name.endswith(_VENTRICLES)]
    voxel_mm3 = float(resolution) ** 3
    rng = np.random.default_rng([seed, 7])
    images, masks, sitefree, tissues, rows, truth = [], [], [], [], [], []
    for subject in synthetic.make_subjects(n_subjects, sites, seed, n_traveling):
        anatomy = synthetic.make_anatomy(_registered(subject, model), model, grid)
        brain = np.isin(anatomy.tissues, _BRAIN_TISSUES)
        volumes = {
            "brain_volume_mm3": float(brain.sum()) * voxel_mm3,
            "ventricle_volume_mm3": float(np.isin(anatomy.atlas, ventricle_ids).sum()) * voxel_mm3,
            "icv_mm3": float(anatomy.mask.sum()) * voxel_mm3,
        }
        for name in subject.sites:
            images.append(synthetic.scan_image(anatomy, by_name[name], rng).astype(np.float32))
            masks.append(anatomy.mask.copy())
            sitefree.append(anatomy.sitefree)
            tissues.append(anatomy.tissues)
            ids = {"participant_id": f"sub-{subject.participant_id}",
                   "session_id": f"ses-{name}" if subject.traveling else "n/a"}
            rows.append({**ids, "site": name, "age": subject.age, "sex": subject.sex,
                         "diagnosis": subject.diagnosis, "traveling": subject.traveling})
            truth.append({**ids, "site": name, **volumes})
    scans = ImageSet(images, masks, pd.DataFrame(rows), grid.affine)
    return TemplateScans(scans, sitefree, tissues, pd.DataFrame(truth), sites)
