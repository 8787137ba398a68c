"""Shared fixtures: one synthetic whole head at 3 mm and the interfaces run on it once.

The head comes from :func:`bidsharmony.datasets.synthetic.make_dataset` (ground truth:
brain mask, tissue dseg, atlas labels, site-free image); the template is the offline
MNI152NLin2009aSym cache at res-03. The chain validate → N4 → brain extraction ('fast') →
Atropos with template priors → atlas to native runs once per session (about 30 s on one
thread) and the test modules score its outputs against the truth.

3 mm is the coarsest grid where a brain-mask Dice of 0.97 is a fair target: measured on
four synthetic heads, 'fast' gave 0.983-0.989 at 3 mm, 0.988-0.994 at 2 mm, but 0.970-0.976
at 3.75 mm (boundary voxels are too large a share of the brain).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

RESOLUTION = 3
TEMPLATE = "MNI152NLin2009aSym"
ATLAS = "Neuromorphometrics"


@dataclass
class Head:
    """One synthetic scan: the raw T1w and its truth files."""

    t1w: str
    mask: str
    dseg: str
    atlas: str
    sitefree: str
    truth_volumes: dict


@dataclass
class Anat:
    """Outputs of the interface chain on the head, with wall times (s)."""

    valid: str
    n4: str
    brain: str
    mask: str
    forward_transform: str
    reverse_transform: str
    priors: list
    dseg: str
    probsegs: list
    atlas_native: str
    seconds: dict = field(default_factory=dict)


@pytest.fixture(scope="session")
def template():
    """Offline template files at 3 mm: T1w, mask, [CSF, GM, WM], atlas and its table."""
    from bidsharmony import templates

    templates.ensure_offline_cache(resolutions=(2, RESOLUTION))
    inputs, _ = templates.template_inputs(TEMPLATE, RESOLUTION, ATLAS)
    return inputs


@pytest.fixture(scope="session")
def head(tmp_path_factory, template) -> Head:
    """One single-site synthetic whole head at 3 mm (site A: gamma map, Rician noise, bias)."""
    from bidsharmony.datasets.synthetic import make_dataset
    from bidsharmony.morphometry import feature_columns, read_label_table

    root = tmp_path_factory.mktemp("synthetic")
    dataset = make_dataset(root, n_subjects=1, n_sites=1, resolution=float(RESOLUTION), seed=2, n_traveling=0)
    row = dataset.scans.iloc[0]
    labels = read_label_table(template["atlas_labels"])
    volumes = {c: float(row[c]) for c in feature_columns(labels)}
    return Head(row["t1w"], row["mask"], row["dseg"], row["atlas"], row["sitefree"], volumes)


@pytest.fixture(scope="session")
def anat(tmp_path_factory, head, template) -> Anat:
    """Run the interfaces on the head once (one thread, 'fast', seed 0)."""
    from bidsharmony.interfaces.ants import (
        ApplyTransforms,
        AtroposSegmentation,
        BrainExtraction,
        N4BiasFieldCorrection,
    )
    from bidsharmony.interfaces.images import ValidateT1w

    work = tmp_path_factory.mktemp("anat")
    seconds = {}

    def run(name, interface):
        folder = work / name
        folder.mkdir()
        start = time.perf_counter()
        result = interface.run(cwd=str(folder))
        seconds[name] = time.perf_counter() - start
        return result.outputs

    valid = run("validate", ValidateT1w(in_file=head.t1w)).out_file
    n4 = run("n4", N4BiasFieldCorrection(in_file=valid, shrink_factor=3)).out_file
    extraction = run(
        "brain_extraction",
        BrainExtraction(
            in_file=n4, template=template["template"], template_mask=template["template_mask"],
            template_probsegs=template["template_probsegs"], reg_quality="fast",
        ),
    )  # fmt: skip
    priors = [
        run(f"prior_{i}", ApplyTransforms(
            input_image=p, reference_image=n4, transforms=[extraction.reverse_transform], interpolation="linear",
        )).output_image  # fmt: skip
        for i, p in enumerate(template["template_probsegs"])
    ]
    tissues = run(
        "atropos",
        AtroposSegmentation(in_file=extraction.out_file, mask_file=extraction.out_mask, prior_probsegs=priors),
    )
    atlas = run(
        "atlas_to_native",
        ApplyTransforms(
            input_image=template["atlas_dseg"], reference_image=n4,
            transforms=[extraction.reverse_transform], interpolation="genericLabel",
        ),
    ).output_image  # fmt: skip
    return Anat(
        valid, n4, extraction.out_file, extraction.out_mask, extraction.forward_transform,
        extraction.reverse_transform, priors, tissues.out_dseg, list(tissues.out_probsegs), atlas, seconds,
    )  # fmt: skip
