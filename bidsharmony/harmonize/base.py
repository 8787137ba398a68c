"""The harmonizer interface shared by every method, and its saved-model format.

A harmonizer learns site effects from a feature table (one row per scan, one numeric column
per feature, e.g. ROI volumes in mm³) and a covariate table (``site``, ``age`` in years,
``sex``; same index) and maps every row to a reference site, keeping the feature names,
column order, index and units::

    harmonizer = ComBat(reference_site="siteA").fit(features, covariates)
    harmonized = harmonizer.transform(new_features, new_covariates)
    harmonizer.save("models/combat")
    same = Harmonizer.load("models/combat")      # dispatches on the manifest

Saved model format
------------------
A saved model is a **folder** (not a single file): a human-readable ``manifest.json`` that can
be inspected, diffed and validated without loading any library, next to the numeric weights in
``weights.npz`` (NumPy arrays only, read with ``allow_pickle=False`` — no pickle anywhere, so a
model file cannot execute code). The manifest records:

``format``            ``"bidsharmony-harmonizer-model"``
``schema_version``    integer, :data:`SCHEMA_VERSION`; a loader refuses newer versions
``harmonizer``        registered name (``"combat"``, ``"combat-gam"``, ``"covbat"``, ``"flow-scm"``)
``bidsharmony_version``, ``library_versions``, ``created`` (UTC, ISO 8601)
``feature_names``     fitted features, in model order; ``feature_units`` from the input
                      table's ``attrs["units"]`` when given; ``feature_medians`` (optional)
                      each feature's median at fit, to refuse data in other units;
                      ``positive_features`` (optional) the features positive in every fitted
                      scan (volumes): an output <= 0 of them is refused, never written
``sites``, ``site_counts``, ``reference_site``
``covariates``        ranges seen in fit (age overall and per site, sex counts, extras),
                      sex coding resolved at fit
``hyperparameters``   constructor arguments (JSON), ``random_seed``
``state``             method-specific JSON state (e.g. spline knots, graph, training history)
``weights``           file name, SHA-256 and the array names/shapes/dtypes in it

The folder is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written model under the final name.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import zipfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from .._version import __version__
from . import registry, validation
from .errors import HarmonizerParameterError, ModelFileError, NotFittedError

LOGGER = logging.getLogger(__name__)

#: version of the manifest layout; bump when a loader of the previous version could misread it
SCHEMA_VERSION = 1
FORMAT_NAME = "bidsharmony-harmonizer-model"
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "weights.npz"

#: where each table harmonizer lives (from :mod:`.registry`), so that loading imports only what it needs
HARMONIZER_MODULES = registry.modules(registry.TABLE)
#: the classes defined so far, by name (filled as their modules are imported)
_REGISTRY: dict = {}

_REQUIRED_MANIFEST_KEYS = (
    "format", "schema_version", "harmonizer", "feature_names", "sites", "reference_site",
    "covariates", "hyperparameters", "state", "weights",
)


def harmonizer_class(name: str):
    """Return the class registered under ``name``, importing its module on first use."""
    if name not in HARMONIZER_MODULES:
        raise HarmonizerParameterError(
            f"unknown harmonizer {name!r}; choose one of {', '.join(sorted(HARMONIZER_MODULES))}"
        )
    if name not in _REGISTRY:
        importlib.import_module(HARMONIZER_MODULES[name])
    return _REGISTRY[name]


def _jsonable(value):
    """Convert NumPy scalars/arrays and paths inside ``value`` to plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _same_value(a, b) -> bool:
    """``a == b`` for parameter values, never raising (e.g. on arrays) — unequal when unsure."""
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _library_versions() -> dict:
    versions = {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__}
    for module in ("torch", "nflows", "neuroHarmonize", "statsmodels"):
        try:
            from importlib.metadata import version

            versions[module] = version(module)
        except Exception:  # noqa: BLE001 - a missing optional library is simply not recorded
            pass
    return versions



def manifest_header(format_name: str, harmonizer) -> dict:
    """The manifest fields every saved model starts with: format, schema, versions, provenance."""
    return {
        "format": format_name,
        "schema_version": SCHEMA_VERSION,
        "harmonizer": harmonizer.name,
        "bidsharmony_version": __version__,
        "library_versions": _library_versions(),
        "created": harmonizer.created_,
        "fit_seconds": round(float(harmonizer.fit_seconds_), 3),
    }


def constructor_parameters(cls) -> list[str]:
    """Keyword arguments of ``cls`` and of its bases' constructors, subclass first."""
    names = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        for name, parameter in inspect.signature(klass.__init__).parameters.items():
            if name != "self" and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL) \
                    and name not in names:
                names.append(name)
    return names


def check_parameter_names(cls, params) -> None:
    """Refuse keyword arguments that are not parameters of ``cls``, listing those that are.

    Both families (and ``set_params``) refuse the same way, so a misspelt parameter is never
    ignored silently.
    """
    accepted = constructor_parameters(cls)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise HarmonizerParameterError(
            f"{cls.__name__} has no parameter {', '.join(map(repr, unknown))}; "
            f"valid parameters: {', '.join(sorted(accepted))}"
        )


class SavedModel:
    """What feature and image harmonizers share: parameters, fitted state, ``save``.

    Subclasses give ``_manifest``, ``_get_state`` and ``_fit_call`` (how to fit them, for errors).
    """

    _fit_call: ClassVar[str] = "fit(...)"

    def get_params(self, deep: bool = True) -> dict:
        """The constructor arguments, as the constructor stored them (scikit-learn's contract).

        Parameters
        ----------
        deep : bool
            Accepted for scikit-learn; no harmonizer holds another estimator, so it changes
            nothing.

        Returns
        -------
        dict
            One entry per keyword of the constructor's signature (and its bases'); plain JSON
            types, as the constructors validate and normalise what they are given (the
            manifest stores them under ``hyperparameters``).
        """
        return {name: getattr(self, name) for name in constructor_parameters(type(self))}

    def set_params(self, **params) -> "SavedModel":
        """Set constructor arguments by name (scikit-learn's ``set_params``) and return ``self``.

        The values are checked by the constructor itself, so ``set_params`` refuses what
        ``__init__`` would refuse, with the same message.

        Raises
        ------
        HarmonizerParameterError
            An unknown parameter name (the message lists the valid ones) or an invalid value.

        Notes
        -----
        Changing a parameter of a fitted model leaves it unfitted: the fitted state was learnt
        with the old value (e.g. ``log_features``), and applying it under the new one would
        return wrong values silently. Call ``fit`` again.
        """
        check_parameter_names(type(self), params)
        if not params:
            return self
        # validated and normalised exactly as a new harmonizer with these values would be
        twin = type(self)(**{**self.get_params(deep=False), **params})
        for name in params:
            value = getattr(twin, name)
            if self._fitted and not _same_value(getattr(self, name), value):
                self._fitted = False
            setattr(self, name, value)
        return self

    def __sklearn_clone__(self) -> "SavedModel":
        """An unfitted harmonizer with equal parameters (what :func:`sklearn.base.clone` returns).

        scikit-learn's default clone checks that the constructor stored every argument as the
        very object it was given; ours validate and normalise them (``(10, 90)`` becomes
        ``[10.0, 90.0]``), idempotently, so the twin is built through the constructor instead.
        """
        return type(self)(**copy.deepcopy(self.get_params(deep=False)))

    def __sklearn_tags__(self):
        """scikit-learn's estimator tags: a transformer whose ``y`` (the covariates) is required.

        Defined here rather than inherited from ``sklearn.base.BaseEstimator`` so that importing
        a harmonizer does not import scikit-learn; only scikit-learn calls this.
        """
        from sklearn.utils import Tags, TargetTags, TransformerTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=True),
                    transformer_tags=TransformerTags(), requires_fit=True)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(self.get_params().items()))
        return f"{type(self).__name__}({params})"

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call {self._fit_call} or load a saved model first"
            )

    def manifest(self) -> dict:
        """The JSON manifest of the fitted model (without the weights section)."""
        self._check_fitted()
        state, _ = self._get_state()
        return self._manifest(state)

    def save(self, path: str | os.PathLike, overwrite: bool = True) -> Path:
        """Write the fitted model to the folder ``path`` (atomically).

        Parameters
        ----------
        path : path-like
            Folder to create. An existing *model* folder is replaced when ``overwrite``; any
            other existing, non-empty folder is left alone and an error raised.
        overwrite : bool
            Replace an existing model folder.

        Returns
        -------
        pathlib.Path
            The folder written.
        """
        self._check_fitted()
        path = Path(path)
        check_model_destination(path, overwrite)
        state, arrays = self._get_state()
        write_model_folder(path, self._manifest(state), arrays)
        LOGGER.info("saved %s model to %s", self.name, path)
        return path


class Harmonizer(SavedModel):
    """Base class: fit site effects on a feature table, map rows to a reference site.

    Parameters
    ----------
    reference_site : str, optional
        Site every row is mapped to. Subclasses choose a default when ``None``.
    min_subjects_per_site : int
        ``fit`` refuses sites with fewer scans than this.
    sex_coding : {"auto", "labels", "0/1", "1/2"} or mapping
        How the ``sex`` column is read; see :mod:`bidsharmony.harmonize.validation`.
    random_seed : int
        Seeds every random step of ``fit`` (and of sampling), recorded in the manifest.

    Notes
    -----
    Subclasses set :attr:`name` and implement ``_fit(data)``, ``_transform(data)``,
    ``_get_state()`` and ``_set_state(state, arrays)``; validation, bookkeeping and
    persistence live here so every method behaves the same at its edges.
    """

    _fit_call: ClassVar[str] = "fit(features, covariates)"
    name: ClassVar[str] = ""
    #: features must be > 0 (the method log-transforms them)
    _requires_positive_features: ClassVar[bool] = False
    #: :meth:`adapt_new_sites` is implemented (sites unknown to the fit can be added)
    supports_site_adaptation: ClassVar[bool] = False
    #: extra advice in the unknown-site error of ``transform``
    _unknown_site_hint: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            _REGISTRY[cls.name] = cls

    def __init__(self, *, reference_site: str | None = None, min_subjects_per_site: int = 10,
                 sex_coding="auto", random_seed: int = 0):
        self.reference_site = None if reference_site is None else str(reference_site)
        self.min_subjects_per_site = validation.check_positive_int(
            "min_subjects_per_site", min_subjects_per_site, minimum=2)
        if not (isinstance(sex_coding, dict) or sex_coding in ("auto", "labels", "0/1", "1/2")):
            raise HarmonizerParameterError(
                f"sex_coding={sex_coding!r} is not understood; use 'auto', 'labels', '0/1', '1/2' "
                "or a mapping such as {'1': 'F', '2': 'M'}"
            )
        self.sex_coding = sex_coding
        self.random_seed = validation.check_positive_int("random_seed", random_seed, minimum=0)
        self._fitted = False


    # --------------------------------------------------------------- subclass hooks
    def _extra_covariates(self) -> tuple:
        """Names of further numeric covariates the method uses (default: none)."""
        return ()

    def _default_reference_site(self, site_counts: dict) -> str | None:
        """Reference when the user gives none: the largest site (ties: first by name)."""
        return max(sorted(site_counts), key=lambda s: site_counts[s])

    def _fit(self, data: validation.PreparedData) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform(self, data: validation.PreparedData) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _get_state(self) -> tuple[dict, dict]:  # pragma: no cover - abstract
        """Return ``(json_state, arrays)`` describing the fitted model."""
        raise NotImplementedError

    def _set_state(self, state: dict, arrays: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _restore_arrays(self, arrays: dict, shapes: dict) -> None:
        """Set ``self.<key>_`` from ``arrays[key]`` after checking each has ``shapes[key]``."""
        for key, shape in shapes.items():
            if arrays[key].shape != shape:
                raise ValueError(f"{key} has shape {arrays[key].shape}, expected {shape}")
        for key in shapes:
            setattr(self, f"{key}_", arrays[key])

    # ------------------------------------------------------------------ fit/transform
    def _prepare(self, features, covariates, fitted: bool) -> validation.PreparedData:
        data = validation.prepare(
            features, covariates,
            feature_names=self.feature_names_ if fitted else None,
            known_sites=self.sites_ if fitted else None,
            sex_coding=self.sex_coding_ if fitted else self.sex_coding,
            extra_covariates=self._extra_covariates(),
            require_positive=self._requires_positive_features,
            unknown_site_hint=self._unknown_site_hint if fitted else None,
        )
        if fitted:  # a fitted model applied to values in other units returns garbage, silently
            validation.check_feature_units(features, getattr(self, "feature_units_", {}))
            validation.check_feature_scale(data, getattr(self, "feature_medians_", {}))
        return data

    def fit(self, features: pd.DataFrame, covariates: pd.DataFrame) -> "Harmonizer":
        """Learn the site effects.

        Parameters
        ----------
        features : pandas.DataFrame
            One row per scan, one numeric column per feature (any units; kept on output).
        covariates : pandas.DataFrame
            Same index; columns ``site``, ``age`` (years), ``sex`` and any extras the method
            uses. Other columns are ignored.

        Returns
        -------
        self
        """
        validation.check_tables(features, covariates)
        validation.covariate_columns_present(covariates, self._extra_covariates())
        self.sex_coding_ = validation.resolve_sex_coding(covariates[validation.SEX], self.sex_coding)
        data = self._prepare(features, covariates, fitted=False)
        site_counts = validation.check_site_sizes(data.site, self.min_subjects_per_site)
        reference = self.reference_site
        if reference is None:
            reference = self._default_reference_site(site_counts)
        elif reference not in site_counts:
            raise HarmonizerParameterError(
                f"reference_site {reference!r} is not among the sites in the data "
                f"({', '.join(sorted(site_counts))}); pick one of them"
            )
        self.reference_site_ = reference
        self.feature_names_ = list(data.feature_names)
        # units travel with the table (pandas ``attrs["units"]``, e.g. {"Left-Hippocampus": "mm^3"})
        units = features.attrs.get("units") if isinstance(features.attrs.get("units"), dict) else {}
        self.feature_units_ = {str(k): str(v) for k, v in units.items() if str(k) in self.feature_names_}
        # typical magnitudes, so that data in other units is refused when the model is applied
        self.feature_medians_ = dict(zip(self.feature_names_, np.median(data.features, axis=0).tolist()))
        # columns positive in every fitted scan are volumes: no output of them may be <= 0
        self.positive_features_ = validation.positive_columns(data.features, self.feature_names_)
        self.sites_ = sorted(site_counts)
        self.site_counts_ = site_counts
        self.covariate_summary_ = validation.covariate_summary(data)
        validation.warn_on_poor_overlap(data, reference)
        validation.warn_on_outlying_features(data)
        started = time.perf_counter()
        self._fit(data.in_label_order())
        self.fit_seconds_ = time.perf_counter() - started
        self.created_ = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._fitted = True
        LOGGER.info("%s fitted on %d scans x %d features from %d sites in %.1f s",
                    self.name, data.n_rows, len(self.feature_names_), len(self.sites_), self.fit_seconds_)
        return self

    def transform(self, features: pd.DataFrame, covariates: pd.DataFrame) -> pd.DataFrame:
        """Map every row to the reference site.

        Parameters
        ----------
        features : pandas.DataFrame
            The fitted feature columns (any order), finite values.
        covariates : pandas.DataFrame
            Same index; ``site`` must be a fitted site. Any subset of sites (even one row) is
            fine.

        Returns
        -------
        pandas.DataFrame
            Harmonized values with the input's index, column names and column order.
        """
        self._check_fitted()
        data = self._prepare(features, covariates, fitted=True)
        values = self._transform(data)
        self._check_positive_output(data, values)
        harmonized = data.to_frame(values)
        harmonized.attrs = dict(features.attrs)  # same names, same units
        return harmonized

    def _check_positive_output(self, data: validation.PreparedData, values: np.ndarray) -> None:
        """Refuse outputs <= 0 in the volume columns (those positive in every fitted scan).

        Models saved before these columns were recorded judge the columns positive in the rows
        given instead.
        """
        volumes = getattr(self, "positive_features_", None)
        if volumes is None:
            volumes = validation.positive_columns(data.features, data.feature_names)
        if getattr(self, "log_features", True) is False:
            fix = ("harmonize the log of the volumes instead: log_features=True (the default; on the "
                   "command line drop --harmonizer-param log_features=false), which keeps them positive")
        else:
            fix = "check these rows' values and units (or those of the fitted scans), or refit"
        validation.check_positive_output(values, data.feature_names, data.index, volumes, self.name, fix)

    def adapt_new_sites(self, features: pd.DataFrame, covariates: pd.DataFrame, **options) -> "Harmonizer":
        """Learn the effect of sites unknown to the fitted model, keeping the fit frozen.

        Only methods with :attr:`supports_site_adaptation` implement it (flow-scm); the others
        raise :class:`~bidsharmony.harmonize.errors.HarmonizerParameterError`.
        """
        raise HarmonizerParameterError(
            f"{self.name} cannot adapt a fitted model to new sites (flow-scm can); refit {self.name} "
            "on a table that includes the new sites"
        )

    def fit_transform(self, features: pd.DataFrame, covariates: pd.DataFrame) -> pd.DataFrame:
        """``fit`` then ``transform`` the same table."""
        return self.fit(features, covariates).transform(features, covariates)

    # ------------------------------------------------------------------ persistence
    def _manifest(self, state: dict) -> dict:
        return _jsonable({
            **manifest_header(FORMAT_NAME, self),
            "feature_names": self.feature_names_,
            "feature_units": getattr(self, "feature_units_", {}),
            "feature_medians": getattr(self, "feature_medians_", {}),
            "positive_features": getattr(self, "positive_features_", None),
            "n_features": len(self.feature_names_),
            "sites": self.sites_,
            "site_counts": self.site_counts_,
            "reference_site": self.reference_site_,
            "covariates": {"sex_coding": self.sex_coding_, **self.covariate_summary_},
            "hyperparameters": self.get_params(),
            "random_seed": self.random_seed,
            "state": state,
        })

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Harmonizer":
        """Load a model saved by :meth:`save`; the manifest decides the class.

        Parameters
        ----------
        path : path-like
            The model folder (or its ``manifest.json``).

        Raises
        ------
        ModelFileError
            Missing folder, corrupted manifest or weights, newer schema, or (when called on a
            subclass) a model of another method.
        """
        path, manifest = read_manifest(path, FORMAT_NAME)
        missing = [k for k in _REQUIRED_MANIFEST_KEYS if k not in manifest]
        if missing:
            raise ModelFileError(f"model manifest {path / MANIFEST_NAME} is corrupted: missing {', '.join(missing)}; "
                                 "re-save or refit the model")
        name = manifest["harmonizer"]
        if name not in HARMONIZER_MODULES:
            raise ModelFileError(f"model {path} was made by harmonizer {name!r}, unknown to bidsharmony "
                                 f"{__version__} (known: {', '.join(sorted(HARMONIZER_MODULES))}); upgrade bidsharmony")
        target = harmonizer_class(name)
        if cls is not Harmonizer and not issubclass(target, cls):
            raise ModelFileError(f"model {path} is a {name!r} model, not a {cls.name or cls.__name__!r} "
                                 "one; load it with Harmonizer.load")
        arrays = read_weights(path, manifest)
        with corrupted_model_errors(path):
            params = dict(manifest["hyperparameters"])
            harmonizer = target(**params)
            harmonizer.sex_coding_ = manifest["covariates"]["sex_coding"]
            summary = {k: v for k, v in manifest["covariates"].items() if k != "sex_coding"}
            harmonizer.covariate_summary_ = summary
            harmonizer.feature_names_ = [str(f) for f in manifest["feature_names"]]
            harmonizer.feature_units_ = dict(manifest.get("feature_units") or {})
            # absent from models saved before it was recorded: their scale is not checked
            harmonizer.feature_medians_ = {str(k): float(v) for k, v in (manifest.get("feature_medians") or {}).items()}
            # absent from older models: their volume columns are judged on the data transformed
            positive = manifest.get("positive_features")
            harmonizer.positive_features_ = None if positive is None else [str(f) for f in positive]
            restore_fit_record(harmonizer, manifest)
            harmonizer._set_state(manifest["state"], arrays)
        harmonizer._fitted = True
        return harmonizer


@contextmanager
def corrupted_model_errors(path: Path):
    """Turn the errors of restoring a model from its files into one :class:`ModelFileError`."""
    try:
        yield
    except ModelFileError as error:
        if str(path) in str(error):
            raise
        raise ModelFileError(f"model {path}: {error}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
        raise ModelFileError(f"model {path} is corrupted or inconsistent ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''}); refit the model") from None


def restore_fit_record(harmonizer, manifest: dict) -> None:
    """Sites, reference site and fit provenance of a saved model, as ``fit`` left them."""
    harmonizer.sites_ = [str(s) for s in manifest["sites"]]
    harmonizer.site_counts_ = dict(manifest.get("site_counts", {}))
    harmonizer.reference_site_ = str(manifest["reference_site"])
    harmonizer.created_ = manifest.get("created")
    harmonizer.fit_seconds_ = float(manifest.get("fit_seconds", 0.0))


def read_weights(path: Path, manifest: dict) -> dict:
    """Read ``weights.npz`` after checking its checksum and the arrays listed in the manifest."""
    info = manifest["weights"]
    weights = path / str(info.get("file", WEIGHTS_NAME))
    if not weights.is_file():
        raise ModelFileError(f"model {path} is incomplete: {weights.name} is missing; restore it or refit")
    if info.get("sha256") and _sha256(weights) != info["sha256"]:
        raise ModelFileError(f"model weights {weights} are corrupted (checksum differs from the "
                             "manifest); restore the file or refit the model")
    try:
        with np.load(weights, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ModelFileError(f"model weights {weights} cannot be read ({error}); refit the model") from None
    expected = info.get("arrays", {})
    absent = sorted(set(expected) - set(arrays))
    if absent:
        raise ModelFileError(f"model weights {weights} are corrupted: arrays {', '.join(absent)} missing; refit")
    for key, meta in expected.items():
        if list(arrays[key].shape) != list(meta.get("shape", arrays[key].shape)):
            raise ModelFileError(f"model weights {weights} are corrupted: array {key} has shape "
                                 f"{list(arrays[key].shape)}, the manifest says {meta['shape']}; refit")
    return arrays


def check_model_destination(path: Path, overwrite: bool) -> None:
    """Refuse to save over a file, a non-model folder, or (unless ``overwrite``) a model."""
    if not path.exists():
        return
    if not path.is_dir():
        raise ModelFileError(f"cannot save a model to {path}: a file of that name exists; "
                             "choose a folder name")
    if any(path.iterdir()) and not (path / MANIFEST_NAME).exists():
        raise ModelFileError(f"refusing to save a model into {path}: the folder holds other "
                             "files; choose a new or empty folder")
    if (path / MANIFEST_NAME).exists() and not overwrite:
        raise ModelFileError(f"a model already exists at {path}; pass overwrite=True or "
                             "choose another folder")


def write_model_folder(path: Path, manifest: dict, arrays: dict) -> Path:
    """Write ``manifest.json`` and ``weights.npz`` into the folder ``path``, atomically.

    The folder is assembled under a temporary sibling name and renamed into place; an
    existing model folder of that name is replaced only once the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        weights = staging / WEIGHTS_NAME
        clean = {str(k): np.ascontiguousarray(v) for k, v in arrays.items()}
        for key, value in clean.items():
            if value.dtype == object:
                raise TypeError(f"weight {key!r} is an object array; only numeric arrays are saved")
        with open(weights, "wb") as handle:
            np.savez(handle, **clean)
        manifest = dict(manifest)
        manifest["weights"] = {
            "file": WEIGHTS_NAME,
            "sha256": _sha256(weights),
            "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in clean.items()},
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.chmod(staging, 0o755)
        if path.exists():
            retired = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, retired)
            os.replace(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return path


def read_manifest(path: str | os.PathLike, format_name: str) -> tuple[Path, dict]:
    """The model folder and its parsed manifest, after checking format and schema version."""
    path = Path(path)
    if path.is_file() and path.name == MANIFEST_NAME:
        path = path.parent
    manifest_path = path / MANIFEST_NAME
    if not path.exists():
        raise ModelFileError(f"model folder {path} does not exist; check the path or fit and save a model")
    if not manifest_path.is_file():
        raise ModelFileError(f"{path} is not a bidsharmony model folder (no {MANIFEST_NAME}); "
                             "give the folder written by the harmonizer's save()")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFileError(f"model manifest {manifest_path} is corrupted ({error}); "
                             "re-save or refit the model") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != format_name:
        raise ModelFileError(f"{manifest_path} is not a {format_name} manifest (format {found!r})")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(f"model manifest {manifest_path} has an invalid schema_version {version!r}; "
                             "re-save or refit the model")
    if version > SCHEMA_VERSION:
        raise ModelFileError(
            f"model {path} uses schema version {version} (written by bidsharmony "
            f"{manifest.get('bidsharmony_version', '?')}), but bidsharmony {__version__} reads up to "
            f"version {SCHEMA_VERSION}; upgrade bidsharmony to load it"
        )
    return path, manifest


def model_format(path: str | os.PathLike) -> str | None:
    """The ``format`` field of a model folder's manifest (``None`` when unreadable)."""
    path = Path(path)
    manifest_path = path if path.name == MANIFEST_NAME else path / MANIFEST_NAME
    try:
        return json.loads(manifest_path.read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None
