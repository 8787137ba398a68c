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

The package keeps the generator apart from the writer: :mod:`.population` (sites and
subjects), :mod:`.head` (the head generator: template model, anatomy of one subject on one
grid), :mod:`.scanner` (site effects), :mod:`.writer` (the BIDS tree, the ground truth and
:func:`make_dataset`) and :mod:`.cli` (``bidsharmony-demo-data``). Everything public is
importable from here.
"""

from .cli import main
from .head import (
    _BRAIN_POSITION,
    ATLAS,
    FOV_MM,
    INTENSITY,
    TEMPLATE,
    Anatomy,
    Grid,
    TemplateModel,
    make_anatomy,
)
from .population import (
    AD_FRACTION,
    AGE_RANGE,
    GEOMETRIES,
    REGIONS,
    Subject,
    _draw_subject,
    make_sites,
    make_subjects,
)
from .scanner import bias_field, intensity_map, scan_image
from .writer import BIDS_VERSION, SyntheticDataset, make_dataset

__all__ = [
    "AD_FRACTION",
    "AGE_RANGE",
    "ATLAS",
    "BIDS_VERSION",
    "FOV_MM",
    "GEOMETRIES",
    "INTENSITY",
    "REGIONS",
    "TEMPLATE",
    "_BRAIN_POSITION",
    "_draw_subject",
    "Anatomy",
    "Grid",
    "Subject",
    "SyntheticDataset",
    "TemplateModel",
    "bias_field",
    "intensity_map",
    "main",
    "make_anatomy",
    "make_dataset",
    "make_sites",
    "make_subjects",
    "scan_image",
]
