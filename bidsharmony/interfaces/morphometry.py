"""Nipype interface: one row of atlas ROI volumes (mm³) per T1w image."""

from __future__ import annotations

import re
from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec

from ..morphometry import feature_columns, read_label_table, roi_volumes_from_files
from ..utils.io import atomic_path

_SUBJECT = re.compile(r"(?:^|_)(sub-[a-zA-Z0-9]+)")
_SESSION = re.compile(r"(?:^|_)(ses-[a-zA-Z0-9]+)")


def bids_subject_session(source_file) -> tuple[str, str]:
    """``("sub-XX", "ses-YY")`` from a BIDS file name; the session is ``"n/a"`` if absent.

    Raises
    ------
    ValueError
        If the name has no ``sub-`` entity (the row could not be attributed).
    """
    name = Path(source_file).name
    subject = _SUBJECT.search(name)
    if subject is None:
        raise ValueError(f"{name}: not a BIDS file name (no sub-<label> entity); cannot name the ROI-volume row")
    session = _SESSION.search(name)
    return subject.group(1), session.group(1) if session else "n/a"


class _ROIVolumesInputSpec(BaseInterfaceInputSpec):
    atlas_file = File(exists=True, mandatory=True, desc="atlas labels in native (T1w) space")
    tissues_file = File(exists=True, mandatory=True, desc="tissue dseg: 0 bg, 1 CSF, 2 GM, 3 WM")
    mask_file = File(exists=True, mandatory=True, desc="brain mask")
    labels_file = File(exists=True, mandatory=True, desc="BIDS dseg.tsv of the atlas (index, name)")
    source_file = File(mandatory=True, desc="the raw T1w (its BIDS name gives participant and session)")


class _ROIVolumesOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc="one-row TSV: participant_id, session_id, volumes in mm³")


class ROIVolumes(SimpleInterface):
    """Measure global and regional volumes with :func:`bidsharmony.morphometry.roi_volumes`.

    The three images must share one grid (native T1w space). Columns: ``participant_id``,
    ``session_id``, then :func:`bidsharmony.morphometry.feature_columns` in its order.
    """

    input_spec = _ROIVolumesInputSpec
    output_spec = _ROIVolumesOutputSpec

    def _run_interface(self, runtime):
        import pandas as pd

        inputs = self.inputs
        labels = read_label_table(inputs.labels_file)
        volumes = roi_volumes_from_files(inputs.atlas_file, inputs.tissues_file, inputs.mask_file, labels)
        subject, session = bids_subject_session(inputs.source_file)
        row = {"participant_id": subject, "session_id": session}
        row.update({column: volumes[column] for column in feature_columns(labels)})
        stem = Path(inputs.source_file).name.split(".")[0]
        out_tsv = Path(runtime.cwd) / f"{stem}_desc-volume_morph.tsv"
        with atomic_path(out_tsv) as tmp:
            # pandas writes floats with repr (shortest exact form): read back, they are equal
            pd.DataFrame([row]).to_csv(tmp, sep="\t", index=False, na_rep="n/a")
        self._results["out_tsv"] = str(out_tsv)
        return runtime
