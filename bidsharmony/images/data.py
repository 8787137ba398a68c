"""Intensity normalisation and 2D slice geometry shared by the image harmonizers.

The network-based image harmonizers (Harmonizing Flows, BlindHarmony, deep-SCM image
counterfactuals) all work on the same kind of data: a template-space volume, robustly scaled
to [0, 1] inside its brain mask, cut into 2D slices cropped to the brain and resampled to a
fixed square size; their output goes the other way, back into the volume and the reference
site's intensity units. This module is the one home of those steps::

    normalized, scale = normalize_intensity(image, mask)              # [0, 1] in the brain
    geometry = SliceGeometry.from_masks(masks, axis=2, size=(32, 32))  # fixed at fit time
    slices, brain = geometry.to_brain_slices(normalized, mask)        # (n, 32, 32) each
    volume = geometry.from_slices(slices, like=normalized)            # back on the grid
    image = denormalize_intensity(volume, reference_scale)            # reference units

A :class:`SliceGeometry` is saved with a model (:meth:`SliceGeometry.to_dict`) so that a
loaded model cuts new scans exactly like the scans it was fitted on.
"""

from __future__ import annotations

import numpy as np

from ..harmonize.errors import HarmonizerInputError, HarmonizerParameterError, ModelFileError

#: robust range used by every image harmonizer: 0.5th and 99.5th percentile inside the brain
DEFAULT_PERCENTILES = (0.5, 99.5)


# ---------------------------------------------------------------------- intensities
def _check_percentiles(percentiles) -> tuple[float, float]:
    try:
        low, high = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise HarmonizerParameterError(f"percentiles={percentiles!r}: give two numbers (low, high)") from None
    if not 0 <= low < high <= 100:
        raise HarmonizerParameterError(f"percentiles={percentiles!r}: need 0 <= low < high <= 100")
    return low, high


def normalize_intensity(image, mask, percentiles=DEFAULT_PERCENTILES) -> tuple[np.ndarray, tuple[float, float]]:
    """Map the robust intensity range inside ``mask`` to [0, 1].

    Parameters
    ----------
    image : numpy.ndarray
        Volume (or slice) in scanner units.
    mask : numpy.ndarray
        Boolean brain mask of the same shape (not empty).
    percentiles : (float, float)
        Percentiles of the in-mask intensities mapped to 0 and 1.

    Returns
    -------
    normalized : numpy.ndarray
        float32, ``(image - lo) / (hi - lo)`` clipped to [0, 1] inside the mask, 0 outside.
    scale : (float, float)
        ``(lo, hi)``, the intensities at ``percentiles``; :func:`denormalize_intensity` undoes
        the mapping for values that were not clipped. When the brain is of one intensity,
        ``hi = lo + 1`` (a zero-width range cannot be divided by).
    """
    low, high = _check_percentiles(percentiles)
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    if image.shape != mask.shape:
        raise HarmonizerInputError(f"image {image.shape} and mask {mask.shape} differ in shape; "
                                   "give the brain mask of this image")
    if not mask.any():
        raise HarmonizerInputError("the brain mask is empty; check the participant-level mask")
    # float64 percentiles: the same scale whatever the image's dtype
    lo, hi = (float(v) for v in np.percentile(image[mask].astype(np.float64), (low, high)))
    if not hi > lo:
        hi = lo + 1.0
    normalized = np.clip((image.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    return np.where(mask, normalized, 0.0).astype(np.float32), (lo, hi)


def denormalize_intensity(normalized, scale) -> np.ndarray:
    """Map [0, 1] values back to intensities: ``normalized * (hi - lo) + lo`` (float32).

    Parameters
    ----------
    normalized : numpy.ndarray
        Values on the normalised scale (e.g. a harmonized volume).
    scale : (float, float)
        ``(lo, hi)`` as returned by :func:`normalize_intensity` (usually the reference site's).
    """
    lo, hi = (float(v) for v in scale)
    return (np.asarray(normalized, dtype=np.float32) * np.float32(hi - lo) + np.float32(lo)).astype(np.float32)


# ---------------------------------------------------------------------- slices
def _resize(slices: np.ndarray, size) -> np.ndarray:
    """Bilinear resampling (corners aligned) of ``(n, H, W)`` slices to ``(n, *size)``."""
    slices = np.ascontiguousarray(slices, dtype=np.float32)
    if tuple(slices.shape[1:]) == tuple(size):  # nothing to resample: keep values exact
        return slices.copy()
    import torch

    t = torch.from_numpy(slices)[:, None]
    return torch.nn.functional.interpolate(t, size=tuple(int(s) for s in size), mode="bilinear",
                                           align_corners=True)[:, 0].numpy()


class SliceGeometry:
    """Where 2D slices are cut from a volume and how they are resampled.

    Parameters
    ----------
    axis : int
        Grid axis the slices are taken across (2: axial on a RAS grid).
    slab : (int, int)
        ``[start, stop)`` of the slice positions along ``axis``.
    crop : ((int, int), (int, int))
        ``[start, stop)`` of the in-plane rows and columns (the two other axes, in order).
    size : (int, int)
        Side lengths the crops are resampled to.

    Notes
    -----
    Resampling is bilinear with aligned corners; when a crop already has ``size`` nothing is
    resampled, so :meth:`to_slices` and :meth:`from_slices` are exact inverses there.
    """

    def __init__(self, axis, slab, crop, size):
        self.axis = int(axis)
        self.slab = [int(v) for v in slab]
        self.crop = [[int(v) for v in pair] for pair in crop]
        self.size = tuple(int(v) for v in size)
        if self.axis not in (0, 1, 2):
            raise HarmonizerParameterError(f"slice axis {axis!r}: give 0, 1 or 2")
        spans = [self.slab, *self.crop]
        if len(spans) != 3 or any(len(s) != 2 or not 0 <= s[0] < s[1] for s in spans):
            raise HarmonizerParameterError(f"slice geometry slab={slab!r} crop={crop!r}: give [start, stop) pairs "
                                           "with 0 <= start < stop")
        if len(self.size) != 2 or min(self.size) < 1:
            raise HarmonizerParameterError(f"slice size {size!r}: give two positive side lengths")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_masks(cls, masks, axis=2, size=(64, 64), margin_vox=2, min_brain_fraction=0.05,
                   n_slices=None) -> "SliceGeometry":
        """The geometry covering the brain of every mask.

        Parameters
        ----------
        masks : sequence of numpy.ndarray
            3D boolean brain masks on one grid; their union decides the crop and the slab.
        axis : int
            Grid axis the slices are taken across.
        size : (int, int)
            Side lengths of the resampled slices.
        margin_vox : int
            Voxels kept around the brain's in-plane bounding box.
        min_brain_fraction : float
            With ``n_slices=None``: the slab runs from the first to the last slice whose brain
            area is at least this fraction of the largest slice's (drops the thin caps).
        n_slices : int, optional
            Instead, this many consecutive slices centred on the brain's centre of mass along
            ``axis`` (e.g. the ventricles' level); None: all brain slices as above.
        """
        masks = [np.asarray(m, dtype=bool) for m in masks]
        if not masks or any(m.ndim != 3 or m.shape != masks[0].shape for m in masks):
            raise HarmonizerInputError("give one or more 3D brain masks of one grid shape to place the slices")
        if int(axis) not in (0, 1, 2):
            raise HarmonizerParameterError(f"slice axis {axis!r}: give 0, 1 or 2")
        union = np.moveaxis(np.any(np.stack(masks), axis=0), int(axis), 0)
        if not union.any():
            raise HarmonizerInputError("every brain mask is empty; check the participant-level masks")
        if n_slices is None:
            slab = _brain_slab(union, min_brain_fraction)
        else:
            slab = _central_slab(union, n_slices)
        rows, cols = np.nonzero(union.any(axis=0))
        crop = [[max(int(rows.min()) - margin_vox, 0), min(int(rows.max()) + margin_vox + 1, union.shape[1])],
                [max(int(cols.min()) - margin_vox, 0), min(int(cols.max()) + margin_vox + 1, union.shape[2])]]
        return cls(axis, slab, crop, size)

    def to_dict(self) -> dict:
        """JSON-serialisable description (saved in a model's manifest)."""
        return {"axis": self.axis, "slab": list(self.slab), "crop": [list(c) for c in self.crop],
                "size": list(self.size)}

    @classmethod
    def from_dict(cls, d: dict) -> "SliceGeometry":
        """The geometry written by :meth:`to_dict`."""
        missing = [k for k in ("axis", "slab", "crop", "size") if k not in d]
        if missing:
            raise ModelFileError(f"slice geometry in the model lacks {', '.join(missing)}; refit the model")
        return cls(d["axis"], d["slab"], d["crop"], d["size"])

    def __eq__(self, other):
        return isinstance(other, SliceGeometry) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"SliceGeometry(axis={self.axis}, slab={self.slab}, crop={self.crop}, size={self.size})"

    @property
    def slice_indices(self) -> list[int]:
        """Positions along :attr:`axis` of the slices, in order."""
        return list(range(*self.slab))

    # ------------------------------------------------------------------ volume <-> slices
    def _check_volume(self, shape) -> None:
        if len(shape) != 3:
            raise HarmonizerInputError(f"a volume of shape {tuple(shape)} is not 3D; give a 3D image")
        moved = (shape[self.axis],) + tuple(n for k, n in enumerate(shape) if k != self.axis)
        spans = [self.slab, *self.crop]
        if any(stop > n for (_, stop), n in zip(spans, moved)):
            raise HarmonizerInputError(f"volume of shape {tuple(shape)} is smaller than the slice geometry "
                                       f"{self.to_dict()}; resample the scan to the model's grid")

    def to_slices(self, volume) -> np.ndarray:
        """``(n_slices, *size)`` float32 slices of the cropped slab of ``volume``."""
        volume = np.asarray(volume)
        self._check_volume(volume.shape)
        v = np.moveaxis(volume, self.axis, 0)
        (r0, r1), (c0, c1) = self.crop
        return _resize(v[self.slab[0]:self.slab[1], r0:r1, c0:c1], self.size)

    def to_brain_slices(self, volume, mask) -> tuple[np.ndarray, np.ndarray]:
        """Slices of ``volume`` set to 0 outside the resampled brain, and that brain (bool)."""
        brain = self.to_slices(np.asarray(mask, dtype=np.float32)) > 0.5
        return np.where(brain, self.to_slices(volume), 0.0).astype(np.float32), brain

    def from_slices(self, slices, like) -> np.ndarray:
        """A float32 copy of ``like`` with the slab replaced by ``slices`` resampled back.

        Voxels outside the slab and the crop keep the values of ``like``.
        """
        out = np.array(like, dtype=np.float32, copy=True)
        self._check_volume(out.shape)
        slices = np.asarray(slices, dtype=np.float32)
        expected = (self.slab[1] - self.slab[0], *self.size)
        if slices.shape != expected:
            raise HarmonizerInputError(f"{slices.shape} slices given, the geometry makes {expected}; "
                                       "give slices cut by this geometry")
        view = np.moveaxis(out, self.axis, 0)  # a view: writing into it fills ``out``
        (r0, r1), (c0, c1) = self.crop
        view[self.slab[0]:self.slab[1], r0:r1, c0:c1] = _resize(slices, (r1 - r0, c1 - c0))
        return out


def _brain_slab(union: np.ndarray, min_brain_fraction: float) -> list[int]:
    """``[start, stop)`` from the first to the last slice with enough brain (axis 0 of ``union``)."""
    if not 0 <= float(min_brain_fraction) <= 1:
        raise HarmonizerParameterError(f"min_brain_fraction={min_brain_fraction!r}: give a value in [0, 1]")
    area = union.reshape(union.shape[0], -1).sum(axis=1)
    kept = np.flatnonzero((area >= float(min_brain_fraction) * area.max()) & (area > 0))
    return [int(kept.min()), int(kept.max()) + 1]


def _central_slab(union: np.ndarray, n_slices) -> list[int]:
    """``[start, stop)`` of ``n_slices`` slices centred on the brain's centre of mass (axis 0)."""
    if isinstance(n_slices, bool) or not isinstance(n_slices, (int, np.integer)) or n_slices < 1:
        raise HarmonizerParameterError(f"n_slices={n_slices!r}: give a positive whole number or None")
    centre = int(round(float(np.nonzero(union)[0].mean())))
    start = max(centre - int(n_slices) // 2, 0)
    return [start, min(start + int(n_slices), union.shape[0])]
