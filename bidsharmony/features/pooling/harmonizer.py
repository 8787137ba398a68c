"""``--harmonizer equivariant-pooling``: site-invariant, age-equivariant representations.

A re-implementation, from the paper, of Lokhande et al., "Equivariance Allows Handling Multiple
Nuisance Variables When Analyzing Pooled Neuroimaging Datasets" (CVPR 2022), Algorithm 1, for
ROI feature tables.

**This harmonizer does not return harmonized features.** ``transform`` returns, per scan, a
learned representation ``Φ(ℓ)`` — columns ``z001 .. z0NN`` (``latent_dim × output_vectors``
numbers, no units) — meant for pooled downstream analysis (prediction, association tests):
it is trained to be invariant to site and equivariant to age (a change of age acts on it as a
rotation). The feature names and units of the input are *not* kept. The saved model's
manifest says so under ``"output"``.

Method (see :mod:`.networks` and :mod:`.training` for the details)
------------------------------------------------------------------
1. Features are log-transformed (volumes) and standardised.
2. Stage one: a hyperspherical autoencoder ``(E, D)`` and ``τ : ℓ -> SO(n)`` are trained with
   ``L_stage1`` (Eq. 3) — for two scans in age groups ``i != j``, ``τ(ℓ_j) ≈ G(i, j) τ(ℓ_i)`` with
   ``G(i, j) = expm((i - j) 1_m)`` (or the Cayley map) — plus reconstruction (weights below).
   Age enters as age groups of ``age_bin_width`` years (decades by default: 60-70, 70-80...).
   The encoder sees the features only; age is used by the loss.
3. Stage two: ``Φ(ℓ) = τ(ℓ) b(τ(ℓ)^-1 ℓ)`` (Lemma 5; SO(n)-equivariant by construction), a
   decoder ``Ψ`` back to ``ℓ`` and a predictor ``h`` of an optional ``target`` are trained with
   reconstruction + prediction + MMD between sites (Eq. 5-7). E and τ are frozen.

Where the sites are matched (``mmd_on``): Eq. 7 as written matches ``Φ`` itself
(``"representation"``). Because ``Φ = τ · b`` and τ carries the age, matching the age-free part
``b(τ(ℓ)^-1 ℓ) = τ(ℓ)^T Φ(ℓ)`` (``"invariant"``) matches ``P(Φ | age)`` across sites (the
paper's Eq. 1) without forcing sites whose age ranges differ to look alike. The default
``"both"`` adds the two terms.

Deviations from Appendix A.7's weights (defaults ``reconstruction_weight_stage1=1`` instead of
0.02, ``mmd_weight=1`` instead of 0.1): our losses are means (the paper's are sums; its code's
scaling is unknown to us). On the synthetic benchmark tables (``benchmarks/bench_pooling.py``)
the A.7 stage-one weight lets the equivariance term erase much of the non-age information of
the latent (held-out diagnosis accuracy 74 % instead of 83 %, Naïve 87 %), and with an MMD
weight of 0.1 the MMD baseline's site adversary stays at 0.86 balanced accuracy (Naïve 0.95,
weight 1: 0.48; 2 seeds). Pass the A.7 values to reproduce the paper's setting.

Baselines of the paper, same networks: ``variant="naive"`` (no equivariance, no MMD: an
autoencoder representation with the predictor) and ``variant="mmd"`` (MMD on ``b(ℓ)``, no
equivariance).

Example::

    pooling = EquivariantPooling(target="diagnosis", random_seed=1)
    z = pooling.fit_transform(features, covariates)   # covariates: site, age, sex, diagnosis
    pooling.save("models/equivariant-pooling")
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pandas as pd
import torch

from ...utils.rowwise import padded_chunks
from ...utils.rowwise_torch import fixed_order_products
from ...utils.threads import torch_threads
from ...harmonize import validation
from ...harmonize.base import Harmonizer
from ...harmonize.errors import CovariateError, HarmonizerParameterError, NotFittedError
from .groups import GROUP_MAPS, covariate_group_table
from .networks import DTYPE, VARIANTS, PoolingNetwork
from .training import PoolingConfig, to_tensor, train_stage_one, train_stage_two

LOGGER = logging.getLogger(__name__)
NAME = "equivariant-pooling"

#: where stage two matches the sites (see the module docstring)
MMD_TARGETS = ("invariant", "representation", "both")
#: special ``target`` values; any other string names a covariate column
AGE_BIN_TARGET, SEX_TARGET = "age-bin", "sex"
#: a numeric target with more distinct values than this is regressed, otherwise classified
MAX_CLASSES = 10
_CHUNK_ROWS = 256  # rows per network pass at transform time, always this many
OUTPUT_DESCRIPTION = (
    "Learned representation per scan (equivariant dataset pooling, Lokhande et al. 2022): "
    "invariant to site, equivariant to age. NOT harmonized features: the columns z001... are "
    "latent coordinates without units, for pooled downstream analysis.")


def _as_tuple_of_ints(name: str, values) -> list:
    try:
        items = list(values)
    except TypeError:
        raise HarmonizerParameterError(f"{name} must be a sequence of positive integers, got {values!r}") from None
    return [validation.check_positive_int(name, v) for v in items]


def _positive_float(name: str, value, allow_zero: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and (number >= 0 if allow_zero else number > 0)):
        raise HarmonizerParameterError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} "
                                       f"number, got {value!r}")
    return number


class EquivariantPooling(Harmonizer):
    """Equivariant dataset pooling: per-scan representations, invariant to site, equivariant to age.

    ``transform`` returns a table of **representations** (columns ``z001...``), not harmonized
    features; see the module docstring.

    Parameters
    ----------
    variant : {"equivariant", "mmd", "naive"}
        The method, or one of the paper's baselines (same networks): ``"mmd"`` drops the
        equivariance (stage-one loss and τ), ``"naive"`` also drops the MMD.
    latent_dim : int
        ``n``: the group is SO(n) and the representation has ``n × output_vectors`` numbers.
    frame_vectors : int, optional
        ``k >= n - 1`` latent vectors (default ``n - 1``); the latent ``ℓ`` is a point of the
        unit sphere of ``R^{n×k}``.
    output_vectors : int
        ``p``: ``Φ(ℓ)`` is an ``n × p`` matrix. The rotation-invariant content of ``p`` vectors
        is their Gram matrix (``p(p+1)/2`` numbers): with ``p = 1`` only the norm of ``Φ``
        would carry site-free, age-free information to the predictor.
    hidden : sequence of int
        Hidden layers of every network (the paper's tabular networks have one layer of 64).
    group_map : {"expm", "cayley"}
        Map from so(n) to SO(n) for ``G(i, j)``: matrix exponential (paper) or Cayley map.
    age_bin_width : float
        Width of the age groups in years (default 10: decades). ``i, j`` in ``G(i, j)`` are
        age-group indices.
    generator_scale : float
        ``G(i, j) = map((i - j) · generator_scale · 1_m)``; 1 as in the paper.
    target : str, optional
        What ``h`` predicts: a covariate column (e.g. ``"diagnosis"``; categorical, or
        regressed when numeric with more than 10 values), ``"sex"``, or ``"age-bin"``. It is
        needed in ``fit`` only. ``None`` trains without the prediction term.
    mmd_on : {"both", "invariant", "representation"}
        Where the sites are matched: the age-free part ``τ^T Φ``, ``Φ`` (Eq. 7 as written), or
        both (default). Ignored by the baselines (no τ: the MMD baseline matches ``b(ℓ)``).
    epochs_stage1, epochs_stage2, batch_size, learning_rate, weight_decay
        Adam training of each stage.
    equivariance_weight, reconstruction_weight_stage1
        Stage-one weights (A.7: 1.0 and 0.02; default 1.0 and 1.0, see the module docstring).
    mmd_weight, prediction_weight, reconstruction_weight_stage2
        Stage-two weights (A.7: 0.1, 1.0, 0.1; default 1.0, 1.0, 0.1).
    log_features : bool
        Model ``log(x)`` (features must be > 0, e.g. volumes).
    num_threads : int
        torch threads during fit (outputs are computed on one, chunk by chunk, so that they
        do not depend on it).
    reference_site : str, optional
        Kept for the common interface (recorded in the manifest); the representation does not
        use a reference site.
    min_subjects_per_site, sex_coding, random_seed
        See :class:`~bidsharmony.harmonize.base.Harmonizer`. Training is seeded by
        ``random_seed`` (initial weights, batch order) and reproducible on CPU.
    """

    name = NAME
    #: what ``transform`` returns: representations, not harmonized features
    output_kind = "representation"
    output_description = OUTPUT_DESCRIPTION

    def __init__(self, *, variant: str = "equivariant", latent_dim: int = 8, frame_vectors: int | None = None,
                 output_vectors: int = 4, hidden=(64,), group_map: str = "expm", age_bin_width: float = 10.0,
                 generator_scale: float = 1.0, target: str | None = None, mmd_on: str = "both",
                 epochs_stage1: int = 150, epochs_stage2: int = 60, batch_size: int = 64,
                 learning_rate: float = 3e-3, weight_decay: float = 0.0, equivariance_weight: float = 1.0,
                 reconstruction_weight_stage1: float = 1.0, mmd_weight: float = 1.0,
                 prediction_weight: float = 1.0, reconstruction_weight_stage2: float = 0.1,
                 log_features: bool = True, num_threads: int = 1, reference_site: str | None = None,
                 min_subjects_per_site: int = 10, sex_coding="auto", random_seed: int = 0):
        super().__init__(reference_site=reference_site, min_subjects_per_site=min_subjects_per_site,
                         sex_coding=sex_coding, random_seed=random_seed)
        if variant not in VARIANTS:
            raise HarmonizerParameterError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if group_map not in GROUP_MAPS:
            raise HarmonizerParameterError(f"group_map must be one of {', '.join(GROUP_MAPS)}, got {group_map!r}")
        if mmd_on not in MMD_TARGETS:
            raise HarmonizerParameterError(f"mmd_on must be one of {', '.join(MMD_TARGETS)}, got {mmd_on!r}")
        self.variant = variant
        self.latent_dim = validation.check_positive_int("latent_dim", latent_dim, minimum=2)
        self.frame_vectors = (None if frame_vectors is None else
                              validation.check_positive_int("frame_vectors", frame_vectors,
                                                            minimum=self.latent_dim - 1))
        self.output_vectors = validation.check_positive_int("output_vectors", output_vectors)
        self.hidden = _as_tuple_of_ints("hidden", hidden)
        self.group_map = group_map
        self.age_bin_width = _positive_float("age_bin_width", age_bin_width)
        self.generator_scale = _positive_float("generator_scale", generator_scale)
        if target is not None and (not isinstance(target, str) or not target.strip()):
            raise HarmonizerParameterError(f"target must be a covariate name, 'sex', 'age-bin' or None, got {target!r}")
        self.target = None if target is None else target.strip()
        if self.target in (validation.SITE, validation.AGE):
            raise HarmonizerParameterError(
                f"target={self.target!r}: the site is the nuisance removed and age the covariate the "
                "representation is equivariant to; use target='age-bin' to predict age groups")
        self.mmd_on = mmd_on
        self.epochs_stage1 = validation.check_positive_int("epochs_stage1", epochs_stage1)
        self.epochs_stage2 = validation.check_positive_int("epochs_stage2", epochs_stage2)
        self.batch_size = validation.check_positive_int("batch_size", batch_size, minimum=4)
        self.learning_rate = _positive_float("learning_rate", learning_rate)
        self.weight_decay = _positive_float("weight_decay", weight_decay, allow_zero=True)
        self.equivariance_weight = _positive_float("equivariance_weight", equivariance_weight, allow_zero=True)
        self.reconstruction_weight_stage1 = _positive_float("reconstruction_weight_stage1",
                                                            reconstruction_weight_stage1, allow_zero=True)
        self.mmd_weight = _positive_float("mmd_weight", mmd_weight, allow_zero=True)
        self.prediction_weight = _positive_float("prediction_weight", prediction_weight, allow_zero=True)
        self.reconstruction_weight_stage2 = _positive_float("reconstruction_weight_stage2",
                                                            reconstruction_weight_stage2, allow_zero=True)
        self.log_features = bool(log_features)
        self.num_threads = validation.check_positive_int("num_threads", num_threads)

    @property
    def _requires_positive_features(self) -> bool:  # type: ignore[override]
        return self.log_features

    @property
    def output_columns(self) -> list:
        """Names of the representation columns: ``z001 .. z0NN``."""
        return [f"z{i + 1:03d}" for i in range(self.latent_dim * self.output_vectors)]

    # ------------------------------------------------------------------ covariates
    def age_bins(self, age) -> np.ndarray:
        """Age-group index of each age (``floor(age / width)`` relative to the youngest group
        seen in fit, clipped to the fitted groups)."""
        self._check_fitted()
        return self._age_groups(age)

    def _age_groups(self, age) -> np.ndarray:
        groups = np.floor(np.asarray(age, dtype=np.float64) / self.age_bin_width).astype(int) - self.age_origin_
        return np.clip(groups, 0, self.n_age_bins_ - 1)

    def _read_target(self, covariates: pd.DataFrame):
        """The raw target column (fit only); ``None`` for no/derived targets."""
        if self.target is None or self.target in (AGE_BIN_TARGET, SEX_TARGET):
            return None
        if self.target not in covariates.columns:
            raise CovariateError(
                f"target covariate {self.target!r} is missing (found {', '.join(map(str, covariates.columns))}); "
                "add it to the covariate table for fit, or choose another target")
        values = covariates[self.target]
        if values.isna().any():
            rows = list(covariates.index[values.isna()])[:8]
            raise CovariateError(f"target covariate {self.target!r} is missing for row(s) {rows}; fill them in "
                                 "or drop those rows")
        return values

    def _encode_target(self, data: validation.PreparedData, raw) -> tuple[dict, np.ndarray | None]:
        """(target description, numeric target) for fit."""
        if self.target is None:
            return {"name": None, "kind": None}, None
        if self.target == AGE_BIN_TARGET:
            labels = self._age_groups(data.age).astype(str)
        elif self.target == SEX_TARGET:
            labels = np.where(data.sex == validation.MALE, "M", "F")
        else:
            numeric = pd.to_numeric(raw, errors="coerce")
            if numeric.notna().all() and numeric.nunique() > MAX_CLASSES:
                values = numeric.to_numpy(dtype=np.float64)
                mean, scale = float(values.mean()), float(values.std()) or 1.0
                return ({"name": self.target, "kind": "regression", "mean": mean, "scale": scale},
                        (values - mean) / scale)
            labels = validation.stripped_labels(raw).to_numpy()
        classes, codes = np.unique(labels, return_inverse=True)
        if len(classes) < 2:
            raise CovariateError(f"target {self.target!r} has a single value ({classes[0]!r}) in the data: "
                                 "nothing to predict; choose another target or None")
        return {"name": self.target, "kind": "classification", "classes": [str(c) for c in classes]}, codes

    # ------------------------------------------------------------------ fit
    def fit(self, features: pd.DataFrame, covariates: pd.DataFrame) -> "EquivariantPooling":
        """Train both stages on the table (see the class docstring).

        ``covariates`` holds ``site``, ``age``, ``sex`` and, when ``target`` names a column,
        that column (for fit only).
        """
        validation.check_tables(features, covariates)
        self._raw_target = self._read_target(covariates)
        try:
            return super().fit(features, covariates)
        finally:
            self._raw_target = None

    def _inputs(self, data: validation.PreparedData) -> np.ndarray:
        values = np.log(data.features) if self.log_features else data.features
        return (values - self.feature_mean_) / self.feature_scale_

    def _config(self) -> PoolingConfig:
        return PoolingConfig(
            epochs_stage1=self.epochs_stage1, epochs_stage2=self.epochs_stage2, batch_size=self.batch_size,
            learning_rate=self.learning_rate, weight_decay=self.weight_decay,
            equivariance_weight=self.equivariance_weight,
            reconstruction_weight_stage1=self.reconstruction_weight_stage1, mmd_weight=self.mmd_weight,
            prediction_weight=self.prediction_weight,
            reconstruction_weight_stage2=self.reconstruction_weight_stage2,
            mmd_on=self.mmd_on if self.variant == "equivariant" else "representation",
            use_mmd=self.variant != "naive", target_kind=self.target_info_.get("kind"))

    def _build(self) -> PoolingNetwork:
        kind = self.target_info_.get("kind")
        n_outputs = (len(self.target_info_["classes"]) if kind == "classification" else
                     1 if kind == "regression" else 0)
        return PoolingNetwork(len(self.feature_names_), latent_dim=self.latent_dim,
                              frame_vectors=self.frame_vectors, output_vectors=self.output_vectors,
                              hidden=self.hidden, n_outputs=n_outputs, variant=self.variant)

    def _fit(self, data: validation.PreparedData) -> None:
        values = np.log(data.features) if self.log_features else data.features
        self.feature_mean_ = values.mean(axis=0)
        scale = values.std(axis=0)
        self.feature_scale_ = np.where(scale > 0, scale, 1.0)
        self.age_origin_ = int(np.floor(data.age.min() / self.age_bin_width))
        self.n_age_bins_ = int(np.floor(data.age.max() / self.age_bin_width)) - self.age_origin_ + 1
        if self.variant == "equivariant" and self.n_age_bins_ < 2:
            warnings.warn(f"every age falls in one age group of {self.age_bin_width:g} years: the stage-one "
                          "equivariance loss has nothing to align; lower age_bin_width", UserWarning, stacklevel=3)
        self.target_info_, target = self._encode_target(data, self._raw_target)
        config = self._config()
        x = to_tensor(self._inputs(data))
        bins = torch.as_tensor(self._age_groups(data.age), dtype=torch.long)
        sites = torch.as_tensor(np.searchsorted(np.asarray(self.sites_, dtype=object), data.site.astype(str)),
                                dtype=torch.long)
        target_tensor = None
        if target is not None:
            target_tensor = (torch.as_tensor(target, dtype=torch.long) if self.target_info_["kind"] == "classification"
                             else to_tensor(target))
        with torch_threads(self.num_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_seed)
            generator = torch.Generator().manual_seed(self.random_seed)
            network = self._build()
            table = None
            if network.equivariant:
                table = covariate_group_table(self.latent_dim, self.n_age_bins_, scale=self.generator_scale,
                                              kind=self.group_map, dtype=DTYPE)
            LOGGER.info("equivariant-pooling (%s): %d scans x %d features, %d sites, %d age groups of %g y, "
                        "SO(%d), representation of %d numbers, target %s", self.variant, data.n_rows,
                        len(self.feature_names_), len(self.sites_), self.n_age_bins_, self.age_bin_width,
                        self.latent_dim, len(self.output_columns), self.target)
            stage1 = train_stage_one(network, x, bins, table, config, generator)
            stage2 = train_stage_two(network, x, sites, target_tensor, config, generator)
        self.network_ = network
        self.training_ = {"stage1": stage1, "stage2": stage2, "config": config.to_dict()}

    # ------------------------------------------------------------------ outputs
    def _check_network(self) -> None:
        self._check_fitted()
        if getattr(self, "network_", None) is None:  # pragma: no cover - defensive
            raise NotFittedError("the equivariant-pooling model has no trained network")

    def _outputs(self, data: validation.PreparedData) -> dict:
        """Latent, τ, Φ (and predictions) of every row, as NumPy arrays.

        The network runs on chunks of exactly ``_CHUNK_ROWS`` rows on one torch thread, with
        its matrix products in fixed order, so that a row's outputs do not depend on the other
        rows, their order or the thread count (see :mod:`bidsharmony.utils.rowwise_torch`).
        """
        self._check_network()
        inputs = to_tensor(self._inputs(data))
        pieces = []
        with torch_threads(1), fixed_order_products():
            for start, stop, positions in padded_chunks(data.n_rows, _CHUNK_ROWS):
                latent = self.network_.encode(inputs.index_select(0, torch.as_tensor(positions)))
                parts = self.network_.represent(latent)
                piece = {"latent": latent, "phi": parts["phi"].flatten(1),
                         "invariant": parts["invariant"].flatten(1), "tau": parts["tau"]}
                if self.network_.h is not None:
                    piece["prediction"] = self.network_.predict(parts["phi"])
                pieces.append({k: None if v is None else v[:stop - start].numpy() for k, v in piece.items()})
        return {k: None if pieces[0][k] is None else np.concatenate([p[k] for p in pieces]) for k in pieces[0]}

    def _transform(self, data: validation.PreparedData) -> np.ndarray:
        return self._outputs(data)["phi"]

    def _frame(self, values: np.ndarray, data: validation.PreparedData, what: str) -> pd.DataFrame:
        frame = pd.DataFrame(values, index=data.index, columns=self.output_columns)
        frame.attrs = {"output_kind": self.output_kind, "method": self.name, "part": what,
                       "description": self.output_description}
        return frame

    def transform(self, features: pd.DataFrame, covariates: pd.DataFrame) -> pd.DataFrame:
        """The learned representation of every scan — **not** harmonized features.

        Parameters
        ----------
        features : pandas.DataFrame
            The fitted feature columns (any order).
        covariates : pandas.DataFrame
            Same index; ``site`` (a fitted site), ``age``, ``sex`` are validated as for every
            harmonizer but the representation is computed from the features alone.

        Returns
        -------
        pandas.DataFrame
            Same index; columns ``z001 .. z0NN`` (``Φ(ℓ)`` flattened row-major), no units.
            ``attrs["output_kind"] == "representation"``.
        """
        self._check_fitted()
        data = self._prepare(features, covariates, fitted=True)
        return self._frame(self._transform(data), data, "phi")

    def invariant_part(self, features: pd.DataFrame, covariates: pd.DataFrame) -> pd.DataFrame:
        """``τ(ℓ)^T Φ(ℓ) = b(τ(ℓ)^-1 ℓ)``: the representation with the age rotation undone
        (for the baselines, the representation itself)."""
        data = self._prepare(features, covariates, fitted=True)
        return self._frame(self._outputs(data)["invariant"], data, "invariant")

    def rotations(self, features: pd.DataFrame, covariates: pd.DataFrame) -> np.ndarray:
        """``τ(ℓ)`` of every scan, ``(n_rows, n, n)`` rotation matrices (equivariant variant)."""
        if self.variant != "equivariant":
            raise HarmonizerParameterError(f"the {self.variant!r} baseline has no τ network")
        data = self._prepare(features, covariates, fitted=True)
        return self._outputs(data)["tau"]

    def predict(self, features: pd.DataFrame, covariates: pd.DataFrame) -> pd.Series:
        """``h(Φ(ℓ))``: the target predicted from the representation (class labels, or values)."""
        self._check_fitted()
        info = self.target_info_
        if info.get("kind") is None:
            raise HarmonizerParameterError("this model was fitted without a target: it has no predictor; "
                                           "refit with target=...")
        data = self._prepare(features, covariates, fitted=True)
        output = self._outputs(data)["prediction"]
        if info["kind"] == "classification":
            values = np.asarray(info["classes"], dtype=object)[output.argmax(axis=1)]
        else:
            values = output[:, 0] * info["scale"] + info["mean"]
        return pd.Series(values, index=data.index, name=f"predicted_{info['name']}")

    @property
    def training_history(self) -> dict:
        """Per-epoch losses of both stages (from fit)."""
        self._check_fitted()
        return self.training_

    # ------------------------------------------------------------------ state
    def _output_manifest(self) -> dict:
        return {"kind": self.output_kind, "columns": self.output_columns, "description": self.output_description,
                "harmonized_features": False}

    def _manifest(self, state: dict) -> dict:
        manifest = super()._manifest(state)
        manifest["output"] = self._output_manifest()
        return manifest

    def _get_state(self):
        state = {"output": self._output_manifest(), "variant": self.variant,
                 "age_groups": {"width": self.age_bin_width, "origin": self.age_origin_,
                                "n_groups": self.n_age_bins_},
                 "target": self.target_info_, "training": self.training_}
        arrays = {f"net.{k}": v.detach().cpu().numpy() for k, v in self.network_.state_dict().items()}
        arrays["feature_mean"] = np.asarray(self.feature_mean_, dtype=np.float64)
        arrays["feature_scale"] = np.asarray(self.feature_scale_, dtype=np.float64)
        return state, arrays

    def _set_state(self, state, arrays):
        n_features = len(self.feature_names_)
        for key in ("feature_mean", "feature_scale"):
            if arrays[key].shape != (n_features,):
                raise ValueError(f"{key} has shape {arrays[key].shape}, expected ({n_features},)")
        self.feature_mean_ = np.array(arrays["feature_mean"], dtype=np.float64)
        self.feature_scale_ = np.array(arrays["feature_scale"], dtype=np.float64)
        groups = state["age_groups"]
        self.age_origin_, self.n_age_bins_ = int(groups["origin"]), int(groups["n_groups"])
        self.target_info_ = dict(state["target"])
        self.training_ = state.get("training", {})
        network = self._build()
        weights = {k[len("net."):]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("net.")}
        network.load_state_dict(weights, strict=True)
        network.eval()
        self.network_ = network
