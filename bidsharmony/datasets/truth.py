"""Scoring participant-level outputs against the synthetic dataset's ground truth."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from ..morphometry import GLOBAL_MEASURES, TISSUE_LABELS


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean arrays (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def _on_grid(truth_file: Path, reference: nb.Nifti1Image) -> np.ndarray:
    """Truth labels on the output's voxel grid (the scan's grid, possibly reoriented)."""
    from nibabel.processing import resample_from_to

    truth = nb.load(truth_file)
    return np.asanyarray(resample_from_to(truth, reference, order=0).dataobj)


def _scan_stem(row) -> str:
    session = row["session_id"]
    return row["participant_id"] + (f"_{session}" if isinstance(session, str) and session != "n/a" else "")


def _anat_dir(root: Path, row) -> Path:
    session = row["session_id"]
    folder = Path(root) / row["participant_id"]
    if isinstance(session, str) and session != "n/a":
        folder /= session
    return folder / "anat"


def score_scan(derivatives: Path, truth: Path, row, atlas: str = "Neuromorphometrics") -> dict:
    """Mask and tissue Dice and ROI-volume errors of one scan's outputs."""
    stem, out_dir, truth_dir = _scan_stem(row), _anat_dir(derivatives, row), _anat_dir(truth, row)
    mask_img = nb.load(out_dir / f"{stem}_desc-brain_mask.nii.gz")
    mask = np.asanyarray(mask_img.dataobj) > 0
    true_mask = _on_grid(truth_dir / f"{stem}_desc-brain_mask.nii.gz", mask_img) > 0
    dseg = np.asanyarray(nb.load(out_dir / f"{stem}_dseg.nii.gz").dataobj)
    true_dseg = _on_grid(truth_dir / f"{stem}_desc-tissue_dseg.nii.gz", mask_img)
    scores = {"participant_id": row["participant_id"], "session_id": row["session_id"], "mask_dice": dice(mask, true_mask)}
    for value, name in TISSUE_LABELS.items():
        scores[f"{name}_dice"] = dice(dseg == value, true_dseg == value)
    return scores


def _processed(derivatives: Path, truth: Path, atlas: str) -> pd.DataFrame:
    """Rows of the true ROI table whose scans have participant-level outputs."""
    table = pd.read_csv(Path(truth) / "roi_volumes.tsv", sep="\t", dtype={"session_id": str}, keep_default_na=False)
    done = [
        (_anat_dir(derivatives, row) / f"{_scan_stem(row)}_atlas-{atlas}_desc-volume_morph.tsv").is_file()
        for _, row in table.iterrows()
    ]
    return table[done]


def volume_errors(derivatives: Path, truth: Path, atlas: str = "Neuromorphometrics", min_volume_mm3: float = 0.0) -> pd.DataFrame:
    """Relative error (%) of every measured volume against the true one, one row per scan.

    Columns whose true volume is at most ``min_volume_mm3`` are left out: a relative error
    of a region that (nearly) vanished at the scan's resolution says nothing.
    """
    rows = []
    for _, row in _processed(derivatives, truth, atlas).iterrows():
        path = _anat_dir(derivatives, row) / f"{_scan_stem(row)}_atlas-{atlas}_desc-volume_morph.tsv"
        measured = pd.read_csv(path, sep="\t").iloc[0]
        columns = [c for c in measured.index if c.startswith(("volume_", "gm_")) and c in row.index]
        errors = {
            c: 100.0 * (measured[c] - row[c]) / row[c] for c in columns if row[c] > min_volume_mm3
        }
        rows.append({"participant_id": row["participant_id"], "session_id": row["session_id"], **errors})
    return pd.DataFrame(rows)


def score_participant_outputs(derivatives: Path, truth: Path, atlas: str = "Neuromorphometrics", min_volume_mm3: float = 1000.0) -> pd.DataFrame:
    """Per scan: Dice of mask and tissues, median |ROI volume error| (%) and global errors."""
    true_table = _processed(derivatives, truth, atlas)
    errors = volume_errors(derivatives, truth, atlas, min_volume_mm3).set_index(["participant_id", "session_id"])
    rows = []
    for _, row in true_table.iterrows():
        scores = score_scan(Path(derivatives), Path(truth), row, atlas)
        err = errors.loc[(row["participant_id"], row["session_id"])].dropna()
        regional = err[[c for c in err.index if c.startswith("volume_") and c[7:] not in GLOBAL_MEASURES]]
        scores["median_abs_roi_volume_error_pct"] = float(np.median(np.abs(regional)))
        for measure in GLOBAL_MEASURES:
            scores[f"{measure}_error_pct"] = float(err.get(f"volume_{measure}", np.nan))
        rows.append(scores)
    return pd.DataFrame(rows)
