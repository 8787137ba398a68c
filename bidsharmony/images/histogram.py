"""Histogram matching: the piecewise-linear landmark standardisation of Nyúl & Udupa (2000).

Nyúl, L. G. & Udupa, J. K. "On standardizing the MR image intensity scale", Magnetic
Resonance in Medicine 42 (1999) 1072–1081; Nyúl, Udupa & Zhang, "New variants of a method of
MRI scale standardization", IEEE TMI 19 (2000) 143–150.

Each scan is described by *landmarks*: the intensities at fixed percentiles of its brain
voxels (default the 1st, the deciles 10–90 and the 99th). Fitting learns a *standard scale*
from the reference site's scans only: every reference scan's landmarks are mapped linearly so
that its first and last landmark land on ``s1`` and ``s2`` (the mean first and last landmark
of the reference scans, so the standard scale is in the reference site's units), and the
mapped landmarks are averaged. A scan of any site is then standardised by the piecewise-linear
map that sends its own landmarks onto the standard scale; intensities below the first or above
the last landmark follow the first or last segment's line.

It is the classical baseline of the image harmonizers: no training, one scan at a time (so
sites never seen in fit work, and the site label is not used at all), monotone (tissue order and
anatomy are kept), but blind to anything that is not a global intensity map (bias fields,
contrast that differs between regions). Voxels outside the brain mask keep their input values;
reference-site scans are standardised too (their landmarks move to the mean landmarks).
"""

from __future__ import annotations

import numpy as np

from ..harmonize.errors import HarmonizerInputError, HarmonizerParameterError
from ..harmonize.image_base import ImageHarmonizer, ImageSet

#: percentiles of the brain intensities used as landmarks: Nyúl's "deciles" configuration
DEFAULT_LANDMARKS = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)


def check_landmarks(landmarks) -> list[float]:
    """The landmark percentiles as floats; raise if they are not increasing values in [0, 100]."""
    try:
        values = [float(v) for v in landmarks]
    except (TypeError, ValueError):
        raise HarmonizerParameterError(f"landmarks={landmarks!r}: give a list of percentiles, e.g. "
                                       f"{list(DEFAULT_LANDMARKS)}") from None
    if len(values) < 2 or not all(np.isfinite(values)):
        raise HarmonizerParameterError(f"landmarks={landmarks!r}: give at least two finite percentiles")
    if values[0] < 0 or values[-1] > 100 or np.any(np.diff(values) <= 0):
        raise HarmonizerParameterError(f"landmarks={landmarks!r}: percentiles must increase strictly within "
                                       "[0, 100]")
    return values


def scan_landmarks(image, mask, landmarks) -> np.ndarray:
    """Intensities of ``image`` at the ``landmarks`` percentiles of its brain, strictly increasing.

    Landmarks that tie (a brain with few distinct intensities) are pulled apart by a millionth of
    the landmark range, so the piecewise-linear map stays a function.

    Raises
    ------
    HarmonizerInputError
        If the brain is of one intensity (no range to map).
    """
    values = np.percentile(np.asarray(image, dtype=np.float64)[np.asarray(mask, bool)], landmarks)
    span = values[-1] - values[0]
    if not span > 0:
        raise HarmonizerInputError("the brain has a single intensity; histogram matching needs a contrast "
                                   "(check the image and its mask)")
    for k in range(1, len(values)):
        values[k] = max(values[k], values[k - 1] + 1e-6 * span)
    return values


def piecewise_linear(values, source, target) -> np.ndarray:
    """The map sending the increasing ``source`` landmarks onto ``target``, applied to ``values``.

    Between landmarks it interpolates linearly; outside them it extends the first and last
    segments (Nyúl's extrapolation), instead of clipping the darkest and brightest voxels.
    """
    values = np.asarray(values, dtype=np.float64)
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    out = np.interp(values, source, target)
    below, above = values < source[0], values > source[-1]
    first = (target[1] - target[0]) / (source[1] - source[0])
    last = (target[-1] - target[-2]) / (source[-1] - source[-2])
    out[below] = target[0] + (values[below] - source[0]) * first
    out[above] = target[-1] + (values[above] - source[-1]) * last
    return out


def standard_scale(landmark_rows) -> tuple[np.ndarray, np.ndarray]:
    """Nyúl's training step on the landmarks of several scans (one row each).

    Every row is mapped linearly so that its first and last landmark land on the mean first and
    mean last landmark; the mapped rows are averaged.

    Returns
    -------
    scale : numpy.ndarray
        The standard landmarks (in the rows' units).
    spread : numpy.ndarray
        Standard deviation of the mapped rows per landmark (0 at both ends).
    """
    rows = np.asarray(landmark_rows, dtype=np.float64)
    s1, s2 = rows[:, 0].mean(), rows[:, -1].mean()
    mapped = s1 + (rows - rows[:, :1]) / (rows[:, -1:] - rows[:, :1]) * (s2 - s1)
    return mapped.mean(axis=0), mapped.std(axis=0)


class HistogramMatching(ImageHarmonizer):
    """Piecewise-linear landmark histogram matching to the reference site (Nyúl & Udupa 2000).

    Parameters
    ----------
    landmarks : sequence of float
        Percentiles of each scan's brain intensities used as landmarks, strictly increasing in
        [0, 100]; the first and last are the ends of the standard scale (Nyúl's ``pc1``,
        ``pc2``). Default: 1, 10, 20, …, 90, 99.
    reference_site, random_seed, num_threads
        See :class:`~bidsharmony.harmonize.image_base.ImageHarmonizer` (nothing here is random
        or threaded).

    Attributes
    ----------
    standard_scale_ : numpy.ndarray
        The standard landmarks in the reference site's units (one per percentile).
    reference_landmark_sd_ : numpy.ndarray
        Spread (SD) of the reference scans' landmarks after the linear step, a measure of how
        much the reference site itself varies.
    """

    name = "histogram-matching"
    desc = "histogrammatching"
    output_description = ("T1w image whose brain intensities are mapped piecewise-linearly onto the reference "
                          "site's standard landmark scale (histogram matching, Nyúl & Udupa 2000)")

    def __init__(self, *, landmarks=DEFAULT_LANDMARKS, reference_site: str | None = None, random_seed: int = 0,
                 num_threads: int = 1):
        super().__init__(reference_site=reference_site, random_seed=random_seed, num_threads=num_threads)
        self.landmarks = check_landmarks(landmarks)

    def _fit(self, scans: ImageSet) -> None:
        rows = np.flatnonzero(np.asarray(scans.sites) == self.reference_site_)
        found = []
        for k in rows:
            try:
                found.append(scan_landmarks(scans.images[k], scans.masks[k], self.landmarks))
            except HarmonizerInputError as error:
                row = scans.covariates.iloc[k]
                raise HarmonizerInputError(f"{row.get('participant_id', f'scan {k}')} "
                                           f"({self.reference_site_}): {error}") from None
        self.standard_scale_, self.reference_landmark_sd_ = standard_scale(found)

    def _transform_scan(self, image, mask, site, covariates):
        source = scan_landmarks(image, mask, self.landmarks)
        out = image.astype(np.float32, copy=True)
        out[mask] = piecewise_linear(image[mask], source, self.standard_scale_)
        info = {"method": "piecewise-linear landmark histogram matching (Nyul & Udupa 2000)",
                "landmark_percentiles": self.landmarks, "source_landmarks": source.tolist(),
                "standard_scale": self.standard_scale_.tolist(), "outside_mask": "input values kept"}
        return out, info

    def _get_state(self):
        state = {"landmarks": list(self.landmarks), "standard_scale": self.standard_scale_.tolist(),
                 "reference_landmark_sd": self.reference_landmark_sd_.tolist()}
        return state, {}

    def _set_state(self, state, arrays):
        if check_landmarks(state["landmarks"]) != self.landmarks or len(state["standard_scale"]) != len(self.landmarks):
            raise ValueError("landmarks and standard scale of the saved state do not match its hyper-parameters")
        self.standard_scale_ = np.asarray(state["standard_scale"], dtype=np.float64)
        self.reference_landmark_sd_ = np.asarray(state["reference_landmark_sd"], dtype=np.float64)
