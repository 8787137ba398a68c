"""The interface shared by image-level harmonizers, and their saved-model format.

Image harmonizers map template-space T1w volumes (the participant level's
``space-<template>_desc-preproc_T1w`` with its brain mask) of any site to the appearance of a
reference site::

    harmonizer = get_image_harmonizer("histogram-matching", reference_site="siteA").fit(scans)
    image, info = harmonizer.transform_scan(volume, mask, site="siteC")
    harmonizer.save("models/histogram-matching")
    same = ImageHarmonizer.load("models/histogram-matching")

Like the feature-table harmonizers of :mod:`bidsharmony.harmonize.base` they know nothing of
BIDS or Nipype: arrays in, arrays out. A saved model is a folder with a ``manifest.json``
(format ``bidsharmony-image-harmonizer-model``, :data:`~bidsharmony.harmonize.base.SCHEMA_VERSION`,
the grid it was fitted on, sites, hyper-parameters, method state) and ``weights.npz`` (NumPy
arrays only, no pickle), written atomically by the same code as the table harmonizers.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from .._version import __version__
from ..utils.threads import with_own_threads
from . import registry
from .base import (
    SavedModel, _jsonable, check_parameter_names, constructor_parameters, corrupted_model_errors, manifest_header,
    read_manifest, read_weights, restore_fit_record,
)
from .errors import HarmonizerInputError, HarmonizerParameterError, ModelFileError

LOGGER = logging.getLogger("bidsharmony")

IMAGE_FORMAT_NAME = "bidsharmony-image-harmonizer-model"

#: where each image harmonizer lives (from :mod:`.registry`), so that loading imports only what it needs
IMAGE_HARMONIZER_MODULES = registry.modules(registry.IMAGE)
_IMAGE_REGISTRY: dict = {}


@dataclass
class ImageSet:
    """Scans resampled to one template grid, with brain masks and covariates.

    Attributes
    ----------
    images : list of numpy.ndarray
        3D float32 volumes of identical shape (RAS template grid), scanner intensity units.
    masks : list of numpy.ndarray
        3D boolean brain masks on the same grid.
    covariates : pandas.DataFrame
        One row per scan: ``participant_id``, ``session_id``, ``site``, ``age``, ``sex`` and
        any further columns.
    affine : numpy.ndarray
        The 4×4 voxel-to-world matrix of the grid.
    """

    images: list
    masks: list
    covariates: pd.DataFrame
    affine: np.ndarray

    def __post_init__(self):
        self.covariates = self.covariates.reset_index(drop=True)
        self.affine = np.asarray(self.affine, dtype=float)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def sites(self) -> list[str]:
        return [str(s) for s in self.covariates["site"]]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(np.shape(self.images[0])) if self.images else ()

    def subset(self, rows) -> "ImageSet":
        """The scans at positions ``rows`` (an index list or boolean mask)."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, dtype=int)
        return ImageSet(
            images=[self.images[i] for i in rows], masks=[self.masks[i] for i in rows],
            covariates=self.covariates.iloc[rows], affine=self.affine,
        )

    def validate(self) -> None:
        """Raise :class:`HarmonizerInputError` naming the first inconsistent scan."""
        if not len(self):
            raise HarmonizerInputError("no scans to harmonize; run the participant level first")
        if len(self.masks) != len(self) or len(self.covariates) != len(self):
            raise HarmonizerInputError(
                f"{len(self)} images but {len(self.masks)} masks and {len(self.covariates)} covariate "
                "rows; give one mask and one covariate row per image")
        if "site" not in self.covariates:
            raise HarmonizerInputError("covariates have no 'site' column; add the site of every scan")
        shape = self.shape
        for k, (image, mask) in enumerate(zip(self.images, self.masks)):
            name = _scan_label(self.covariates.iloc[k])
            if np.ndim(image) != 3 or np.shape(image) != shape or np.shape(mask) != shape:
                raise HarmonizerInputError(
                    f"{name}: image {np.shape(image)} / mask {np.shape(mask)} differ from the grid "
                    f"{shape}; resample every scan to the same template grid")
            if not np.isfinite(image).all():
                raise HarmonizerInputError(f"{name}: the image has NaN or infinite voxels; fix the input")
            if not np.any(mask):
                raise HarmonizerInputError(f"{name}: the brain mask is empty; check the participant-level mask")


def _scan_label(row) -> str:
    session = row.get("session_id", "n/a")
    return f"{row.get('participant_id', '?')}" + ("" if session in (None, "n/a", "") else f" {session}")


def image_harmonizer_class(name: str):
    """The class registered under ``name``, importing its module on first use."""
    if name not in IMAGE_HARMONIZER_MODULES:
        raise HarmonizerParameterError(
            f"unknown image harmonizer {name!r}; choose one of {', '.join(sorted(IMAGE_HARMONIZER_MODULES))}")
    if name not in _IMAGE_REGISTRY:
        importlib.import_module(IMAGE_HARMONIZER_MODULES[name])
    return _IMAGE_REGISTRY[name]


def get_image_harmonizer(name: str, **params) -> "ImageHarmonizer":
    """A new, unfitted image harmonizer; an unknown keyword argument is refused, as for the
    table harmonizers (:func:`bidsharmony.harmonize.get_harmonizer`)."""
    cls = image_harmonizer_class(name)
    check_parameter_names(cls, params)
    return cls(**params)


class ImageHarmonizer(SavedModel):
    """Base class: learn a reference site's appearance, map any scan to it.

    Parameters
    ----------
    reference_site : str, optional
        Site every scan is mapped to; default: the site with most scans.
    random_seed : int
        Seeds every random step (NumPy and torch), recorded in the manifest.
    num_threads : int
        torch/BLAS threads used by fit and transform.

    Notes
    -----
    Subclasses set :attr:`name` and :attr:`desc` and implement ``_fit(scans)``,
    ``_transform_scan(image, mask, site, covariates)``, ``_get_state()`` and
    ``_set_state(state, arrays)``. Constructor arguments must be JSON-serialisable keywords
    with defaults: they are saved as hyper-parameters and passed back on :meth:`load`.
    """

    _fit_call: ClassVar[str] = "fit(scans)"
    name: ClassVar[str] = ""
    #: BIDS ``desc`` label of the harmonized images
    desc: ClassVar[str] = ""
    output_description: ClassVar[str] = "T1w image harmonized to the reference site"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            _IMAGE_REGISTRY[cls.name] = cls

    def __init__(self, *, reference_site: str | None = None, random_seed: int = 0, num_threads: int = 1):
        self.reference_site = None if reference_site is None else str(reference_site)
        if not isinstance(random_seed, (int, np.integer)) or random_seed < 0:
            raise HarmonizerParameterError(f"random_seed={random_seed!r}: give a non-negative integer")
        self.random_seed = int(random_seed)
        self.num_threads = max(int(num_threads), 1)
        self._fitted = False

    # ------------------------------------------------------------------ parameters
    @classmethod
    def parameter_names(cls) -> set[str]:
        return set(constructor_parameters(cls))

    def _seed(self) -> np.random.Generator:
        """Seed torch (when loaded) and return a NumPy generator, both from ``random_seed``."""
        try:
            import torch

            torch.manual_seed(self.random_seed)
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        return np.random.default_rng(self.random_seed)

    # --------------------------------------------------------------- subclass hooks
    def _fit(self, scans: ImageSet) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform_scan(self, image, mask, site, covariates) -> tuple[np.ndarray, dict]:  # pragma: no cover
        raise NotImplementedError

    def _get_state(self) -> tuple[dict, dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_state(self, state: dict, arrays: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ fit/transform
    @with_own_threads
    def fit(self, scans: ImageSet) -> "ImageHarmonizer":
        """Learn the reference site's appearance (and whatever else the method needs)."""
        scans.validate()
        counts = pd.Series(scans.sites).value_counts()
        reference = self.reference_site or str(sorted(counts.index, key=lambda s: (-counts[s], s))[0])
        if reference not in counts:
            raise HarmonizerParameterError(
                f"reference_site {reference!r} is not among the sites in the data "
                f"({', '.join(sorted(counts.index))}); pick one of them")
        self.reference_site_ = reference
        self.sites_ = sorted(counts.index)
        self.site_counts_ = {str(k): int(v) for k, v in counts.items()}
        self.grid_shape_ = list(scans.shape)
        self.affine_ = scans.affine.copy()
        started = time.perf_counter()
        self._fit(scans)
        self.fit_seconds_ = time.perf_counter() - started
        self.created_ = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._fitted = True
        LOGGER.info("%s fitted on %d scans (reference %s) in %.1f s", self.name, len(scans), reference, self.fit_seconds_)
        return self

    @with_own_threads
    def transform_scan(self, image, mask, site: str, covariates: dict | None = None) -> tuple[np.ndarray, dict]:
        """Map one scan to the reference site.

        Parameters
        ----------
        image : numpy.ndarray
            3D volume on the fitted grid.
        mask : numpy.ndarray
            Its brain mask.
        site : str
            The scan's site (any site, also one never seen in ``fit``).
        covariates : dict, optional
            The scan's covariates (methods conditioning on age/sex need them).

        Returns
        -------
        image : numpy.ndarray
            Harmonized float32 volume, same grid, in the reference site's intensity units.
        info : dict
            Per-scan facts for the JSON sidecar (JSON-serialisable).
        """
        self._check_fitted()
        image = np.asarray(image, dtype=np.float32)
        mask = np.asarray(mask, dtype=bool)
        if list(image.shape) != list(self.grid_shape_) or mask.shape != image.shape:
            raise HarmonizerInputError(
                f"scan of site {site} has shape {image.shape} (mask {mask.shape}), the model was fitted "
                f"on {tuple(self.grid_shape_)}; resample it to the model's template grid")
        if not np.isfinite(image).all():
            raise HarmonizerInputError(f"scan of site {site} has NaN or infinite voxels; fix the input")
        if not mask.any():
            raise HarmonizerInputError(f"scan of site {site} has an empty brain mask; check the mask")
        harmonized, info = self._transform_scan(image, mask, str(site), dict(covariates or {}))
        return np.asarray(harmonized, dtype=np.float32), _jsonable(info)

    def transform(self, scans: ImageSet) -> list[tuple[np.ndarray, dict]]:
        """:meth:`transform_scan` of every scan of ``scans``."""
        return [
            self.transform_scan(image, mask, row["site"], row.to_dict())
            for image, mask, (_, row) in zip(scans.images, scans.masks, scans.covariates.iterrows())
        ]

    # ------------------------------------------------------------------ persistence
    def _manifest(self, state: dict) -> dict:
        return _jsonable({
            **manifest_header(IMAGE_FORMAT_NAME, self),
            "grid": {"shape": self.grid_shape_, "affine": self.affine_},
            "sites": self.sites_,
            "site_counts": self.site_counts_,
            "reference_site": self.reference_site_,
            "hyperparameters": self.get_params(),
            "random_seed": self.random_seed,
            "state": state,
        })

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImageHarmonizer":
        """Load a model saved by :meth:`save`; the manifest decides the class."""
        path, manifest = read_manifest(path, IMAGE_FORMAT_NAME)
        missing = [k for k in ("harmonizer", "grid", "sites", "reference_site", "hyperparameters",
                               "state", "weights") if k not in manifest]
        if missing:
            raise ModelFileError(f"model manifest in {path} is corrupted: missing {', '.join(missing)}; refit")
        name = manifest["harmonizer"]
        if name not in IMAGE_HARMONIZER_MODULES:
            raise ModelFileError(f"model {path} was made by image harmonizer {name!r}, unknown to "
                                 f"bidsharmony {__version__}; upgrade bidsharmony")
        target = image_harmonizer_class(name)
        if cls is not ImageHarmonizer and not issubclass(target, cls):
            raise ModelFileError(f"model {path} is a {name!r} model, not a {cls.name!r} one")
        arrays = read_weights(path, manifest)
        with corrupted_model_errors(path):
            harmonizer = target(**dict(manifest["hyperparameters"]))
            restore_fit_record(harmonizer, manifest)
            harmonizer.grid_shape_ = [int(n) for n in manifest["grid"]["shape"]]
            harmonizer.affine_ = np.asarray(manifest["grid"]["affine"], dtype=float)
            harmonizer._set_state(manifest["state"], arrays)
        harmonizer._fitted = True
        return harmonizer


# ---------------------------------------------------------------------- torch weights
def module_to_arrays(module, prefix: str) -> dict[str, np.ndarray]:
    """A torch module's ``state_dict`` as NumPy arrays keyed ``<prefix>.<name>``."""
    return {f"{prefix}.{key}": value.detach().cpu().numpy().copy() for key, value in module.state_dict().items()}


def arrays_to_module(module, prefix: str, arrays: dict) -> None:
    """Load the arrays written by :func:`module_to_arrays` back into ``module`` (strict)."""
    import torch

    start = f"{prefix}."
    state = {key[len(start):]: torch.from_numpy(np.array(value)) for key, value in arrays.items() if key.startswith(start)}
    expected = set(module.state_dict())
    if set(state) != expected:
        missing = sorted(expected - set(state))[:3]
        raise ModelFileError(f"weights for {prefix!r} do not match the network (missing {missing}); refit the model")
    module.load_state_dict(state)
