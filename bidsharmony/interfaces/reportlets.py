"""QC figures a reviewer looks at: mask contour, registration edges, segmentation overlay."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, Str, TraitedSpec

_CUTS = 7  # slices per view; enough to judge a mask or a registration at a glance


def _figure(path, background, title, overlays):
    """Draw ``background`` in three views with ``overlays`` (callables on a nilearn display)."""
    os.environ.setdefault("MPLCONFIGDIR", str(Path(path).parent / ".matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting

    fig, axes = plt.subplots(3, 1, figsize=(14, 6.5))
    for axis, mode in zip(axes, "zxy"):
        display = plotting.plot_anat(
            background, display_mode=mode, cut_coords=_CUTS, axes=axis, annotate=False,
            draw_cross=False, dim=-0.3, black_bg=True,
        )
        for overlay in overlays:
            overlay(display)
    fig.suptitle(title, color="white")
    fig.patch.set_facecolor("black")
    fig.savefig(path, dpi=80, facecolor="black")
    plt.close(fig)
    return str(path)


class _ReportInputSpec(BaseInterfaceInputSpec):
    background = File(exists=True, mandatory=True, desc="image shown in grey")
    overlay = File(exists=True, mandatory=True, desc="mask, edge image or label image")
    title = Str("", usedefault=True)


class _ReportOutputSpec(TraitedSpec):
    out_report = File(desc="PNG figure")


class MaskContourReport(SimpleInterface):
    """The brain mask's contour (red) over the T1w."""

    input_spec = _ReportInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        path = Path(runtime.cwd) / "mask_contour.png"
        self._results["out_report"] = _figure(
            path, self.inputs.background, self.inputs.title or "Brain mask",
            [lambda d: d.add_contours(self.inputs.overlay, levels=[0.5], colors="r", linewidths=1)],
        )
        return runtime


class RegistrationReport(SimpleInterface):
    """The template's tissue edges (GM/WM boundaries) over the registered T1w."""

    input_spec = _ReportInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        path = Path(runtime.cwd) / "registration.png"
        self._results["out_report"] = _figure(
            path, self.inputs.background, self.inputs.title or "Template edges over the registered T1w",
            [lambda d: d.add_contours(self.inputs.overlay, levels=[0.5], colors="lime", linewidths=0.8)],
        )
        return runtime


class SegmentationReport(SimpleInterface):
    """Tissue-class boundaries (CSF blue, GM/WM yellow) over the T1w."""

    input_spec = _ReportInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nb

        dseg = nb.load(self.inputs.overlay)
        labels = np.asanyarray(dseg.dataobj)
        wm = nb.Nifti1Image((labels == 3).astype("uint8"), dseg.affine)
        brain = nb.Nifti1Image((labels >= 2).astype("uint8"), dseg.affine)
        path = Path(runtime.cwd) / "segmentation.png"
        self._results["out_report"] = _figure(
            path, self.inputs.background, self.inputs.title or "Tissue segmentation",
            [
                lambda d: d.add_contours(brain, levels=[0.5], colors="deepskyblue", linewidths=0.8),
                lambda d: d.add_contours(wm, levels=[0.5], colors="yellow", linewidths=0.8),
            ],
        )
        return runtime
