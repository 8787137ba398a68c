"""Counterfactual harmonization with a flow-based SCM (Wang et al. 2021) as a :class:`Harmonizer`.

The model is the SCM of Table 6 (see :mod:`bidsharmony.scm.graph`): sex and site are learned categorical
roots, age a flow on the log scale, and the ROI features a conditional normalizing flow whose
context network reads ``[s, a, one-hot t]``. Harmonizing a scan is a counterfactual query
(Pawlowski et al. 2020):

1. abduction — ``eps_X = f^-1(x; s, a, t)``: the scan's subject-specific part;
2. action — ``do(t = reference site)``;
3. prediction — ``x' = f(eps_X; s, a, t_ref)``: the same scan as the reference site would
   have measured it.

Scans already at the reference site are returned unchanged (bit-identical). Features are
modelled as standardised log volumes and mapped back to their units. See
:mod:`bidsharmony.scm.flows` for the two architectures: element-wise conditional splines (default; exact and
fast both ways) or the paper's masked autoregressive flows.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import torch

from ...utils.rowwise import padded_chunks
from ...utils.rowwise_torch import fixed_order_products
from ...harmonize import validation
from ...harmonize.base import Harmonizer
from ...harmonize.errors import CovariateError, HarmonizerParameterError, NotEnoughSubjectsError, NotFittedError
from ...scm import flows
from ...scm.graph import CausalGraph, harmonization_graph
from ...scm.model import DTYPE, FlowSCM
from ...scm.training import TrainingConfig, evaluate_log_prob, seed_everything, train_scm
from ...utils.threads import torch_threads
from . import adaptation

LOGGER = logging.getLogger(__name__)
FEATURES = "x"
#: batch size of the covariate mechanisms' training (see FlowSCMHarmonizer)
COVARIATE_BATCH_SIZE = 1024
_CHUNK_ROWS = 2048  # rows per pass at transform time, always this many (see FlowSCMHarmonizer._map_rows)


@functools.lru_cache(maxsize=None)
def _chunk_workers(num_threads: int) -> ThreadPoolExecutor:
    """The worker threads of threaded transforms, one pool per thread count, kept for reuse.

    glibc gives each thread its own malloc arena: fresh threads at every transform took
    their chunks' memory from the kernel again (~7,000 page faults, a sixth of the CPU time
    of a 7,500-row transform); the same threads keep their arenas warm.
    """
    return ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="bidsharmony-transform")


# a forked child inherits the pools but not their threads: it must start its own
os.register_at_fork(after_in_child=_chunk_workers.cache_clear)


class FlowSCMHarmonizer(Harmonizer):
    """Flow-based SCM counterfactual harmonization.

    Parameters
    ----------
    flow : {"affine", "linear-spline", "quadratic-spline"}
        Conditional transform of the features: affine (default), linear-rational spline
        (Dolatabadi et al. 2020) or rational-quadratic spline (Durkan et al. 2019). Affine is
        the default because it did best on real data: on FCON1000 (974 scans, 16 sites, 5 seeds)
        it left less site signal than the quadratic spline (site balanced accuracy 0.075 ± 0.004
        vs 0.083 ± 0.004) at the same cross-site age error (11.01 y) in half the fit time, and
        also on a 3-site table of 291 scans (0.362 vs 0.394); BENCHMARKS.md, issue 20. Site
        effects that bend a volume's distribution (as the simulator's nonlinear ones do)
        need a spline.
    architecture : {"elementwise", "autoregressive"}
        ``"elementwise"``: one conditional monotone map per feature + a Gaussian copula
        (default; exact and fast in both directions). ``"autoregressive"``: the paper's masked
        autoregressive flows (prediction needs one pass per feature; slow for many features).
    num_layers : int
        Stacked flow layers.
    num_bins : int
        Spline bins.
    tail_bound : float
        Splines act on ``[-B, B]`` (standardised units), identity outside.
    context_hidden : sequence of int
        Hidden layers of the context network over ``[s, a, one-hot t, extras]``.
    context_features : int
        Width of the context embedding.
    hidden_features : int
        MADE width (autoregressive only).
    correlated : bool
        Element-wise only: model correlations between features (cancels in counterfactuals).
    site_interactions : bool
        ``False`` (default): the site shifts the flow's parameters additively, age and sex act
        through the context network (no site-by-age interaction: identifiable when sites cover
        different ages, like ComBat's assumption but with non-linear site effects). ``True``:
        the paper's joint context network over ``[s, a, one-hot t]``.
    spline_conditioning : {"discrete", "all"}
        Element-wise splines: their shape depends on site and sex only (default; one spline
        per site x sex, location and scale still follow age — fast, and the site's non-linear
        distortion is what harmonization needs) or on the whole context per scan (``"all"``,
        the paper's conditional spline; ~3x slower to train, ~10x slower to apply).
    log_features : bool
        Model ``log(x)``; features must be positive (volumes).
    extra_covariates : sequence of str
        Further observed numeric parents of the features (e.g. ``"icv"``); binary if 0/1.
    epochs, batch_size, learning_rate, weight_decay, lr_decay
        Adam training of the features' mechanism with a staircase decay at 50 % and 75 % of
        the epochs (paper defaults). The covariate mechanisms (sex, site, age, extras) are
        trained first, on their own, for as many epochs with batches of
        :data:`COVARIATE_BATCH_SIZE` and a 10x learning rate: the joint likelihood is a sum
        of per-mechanism terms with no shared parameters, so this maximises the same
        objective, and those low-dimensional mechanisms would otherwise cost a quarter of
        each training step (they play no part in ``do(site)`` harmonization). Training
        starts from a closed-form location-scale fit; 20 epochs (the default) are enough for
        the affine flow, and on real volumes more maximum-likelihood epochs left more site
        signal (FCON1000, 5 seeds: site balanced accuracy 0.068 at 20 epochs, 0.071 at 40,
        0.075 at 100; BENCHMARKS.md). The spline flows need ~100.
    validation_fraction : float
        Held-out share (stratified by site) for model selection; the best epoch is kept.
    patience : int, optional
        Early stopping on the validation NLL.
    num_threads : int
        torch threads for fit and transform.
    reference_site : str, optional
        Target site of ``transform``; default the site with most scans.
    min_subjects_per_site, sex_coding, random_seed
        See :class:`~bidsharmony.harmonize.base.Harmonizer`.
    """

    name = "flow-scm"
    supports_site_adaptation = True
    _unknown_site_hint = ("adapt the model to them (FlowSCMHarmonizer.adapt_new_sites; "
                          "--adapt-new-site on the command line)")

    def __init__(self, *, flow: str = "affine", architecture: str = "elementwise",
                 num_layers: int = 1, num_bins: int = 8, tail_bound: float = 4.0,
                 context_hidden=(64, 64), context_features: int = 32, hidden_features: int = 64,
                 correlated: bool = True, site_interactions: bool = False,
                 spline_conditioning: str = "discrete",
                 log_features: bool = True, extra_covariates=(),
                 epochs: int = 20, batch_size: int = 64, learning_rate: float = 3e-4,
                 weight_decay: float = 1e-4, lr_decay: float = 0.1, validation_fraction: float = 0.1,
                 patience: int | None = None, num_threads: int = 1, reference_site: str | None = None,
                 min_subjects_per_site: int = 10, sex_coding="auto", random_seed: int = 0):
        super().__init__(reference_site=reference_site, min_subjects_per_site=min_subjects_per_site,
                         sex_coding=sex_coding, random_seed=random_seed)
        if flow not in flows.FLOWS:
            raise HarmonizerParameterError(f"flow must be one of {', '.join(flows.FLOWS)}, got {flow!r}")
        if architecture not in flows.ARCHITECTURES:
            raise HarmonizerParameterError(
                f"architecture must be one of {', '.join(flows.ARCHITECTURES)}, got {architecture!r}")
        self.flow = flow
        self.architecture = architecture
        self.num_layers = validation.check_positive_int("num_layers", num_layers)
        self.num_bins = validation.check_positive_int("num_bins", num_bins, minimum=2)
        self.tail_bound = float(tail_bound)
        if not self.tail_bound > 0:
            raise HarmonizerParameterError(f"tail_bound must be > 0, got {tail_bound!r}")
        self.context_hidden = [validation.check_positive_int("context_hidden", h) for h in context_hidden]
        self.context_features = validation.check_positive_int("context_features", context_features)
        self.hidden_features = validation.check_positive_int("hidden_features", hidden_features)
        self.correlated = bool(correlated)
        self.site_interactions = bool(site_interactions)
        if spline_conditioning not in ("discrete", "all"):
            raise HarmonizerParameterError(
                f"spline_conditioning must be 'discrete' or 'all', got {spline_conditioning!r}")
        self.spline_conditioning = spline_conditioning
        self.log_features = bool(log_features)
        self.extra_covariates = [str(c) for c in extra_covariates]
        reserved = set(validation.REQUIRED_COVARIATES) | {FEATURES}
        if reserved & set(self.extra_covariates):
            raise HarmonizerParameterError(f"extra_covariates must not use the names {sorted(reserved)}")
        self.epochs = validation.check_positive_int("epochs", epochs)
        self.batch_size = validation.check_positive_int("batch_size", batch_size, minimum=2)
        self.learning_rate = float(learning_rate)
        self.weight_decay = float(weight_decay)
        self.lr_decay = float(lr_decay)
        self.validation_fraction = validation.check_fraction("validation_fraction", validation_fraction, 0.0, 0.9)
        self.patience = None if patience is None else validation.check_positive_int("patience", patience)
        self.num_threads = validation.check_positive_int("num_threads", num_threads)

    @property
    def _requires_positive_features(self) -> bool:  # type: ignore[override]
        return self.log_features

    def _extra_covariates(self) -> tuple:
        return tuple(self.extra_covariates)

    # ------------------------------------------------------------------ encoding
    def _values(self, data: validation.PreparedData) -> dict:
        """Validated arrays -> the SCM's tensors."""
        values = {
            "sex": torch.as_tensor(data.sex, dtype=torch.long),
            "site": torch.as_tensor(data.site_positions(self.sites_), dtype=torch.long),
            "age": torch.as_tensor(data.age, dtype=DTYPE).view(-1, 1),
            FEATURES: torch.as_tensor(data.features, dtype=DTYPE),
        }
        for name in self.extra_covariates:
            if self.extra_kinds_[name] == "binary":
                raw = data.extra[name]
                if not np.isin(raw, (0.0, 1.0)).all():
                    raise CovariateError(f"covariate {name!r} was binary (0/1) in fit but holds other "
                                         f"values now ({sorted(set(raw) - {0.0, 1.0})[:5]})")
                values[name] = torch.as_tensor(raw, dtype=torch.long)
            else:
                values[name] = torch.as_tensor(data.extra[name], dtype=DTYPE).view(-1, 1)
        return values

    def _build(self, graph: CausalGraph) -> FlowSCM:
        return FlowSCM(graph, context_hidden=self.context_hidden, context_features=self.context_features,
                       hidden_features=self.hidden_features, num_bins=self.num_bins,
                       tail_bound=self.tail_bound)

    # ------------------------------------------------------------------ fit
    def _fit(self, data: validation.PreparedData) -> None:
        self.adapted_sites_ = {}
        self.extra_kinds_ = {
            name: "binary" if np.isin(values, (0.0, 1.0)).all() else "continuous"
            for name, values in data.extra.items()
        }
        graph = harmonization_graph(
            len(self.sites_), len(self.feature_names_), flow=self.flow, architecture=self.architecture,
            num_layers=self.num_layers, correlated=self.correlated, log_features=self.log_features,
            site_interactions=self.site_interactions, spline_conditioning=self.spline_conditioning,
            extra_parents=self.extra_kinds_, feature_node=FEATURES)
        config = TrainingConfig(
            epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
            weight_decay=self.weight_decay, lr_decay=self.lr_decay,
            validation_fraction=self.validation_fraction, patience=self.patience,
            seed=self.random_seed, num_threads=self.num_threads)
        with torch_threads(self.num_threads):
            seed_everything(self.random_seed)  # the initial weights depend on the seed only
            scm = self._build(graph)
            values = self._values(data)
            LOGGER.info("flow-SCM: %s flow (%s, %d layer(s)), %d parameters, %d scans x %d features, "
                        "%d sites, reference %s", self.flow, self.architecture, self.num_layers,
                        flows.count_parameters(scm), data.n_rows, len(self.feature_names_),
                        len(self.sites_), self.reference_site_)
            strata = values["site"].numpy()
            covariates = [name for name in graph.order if name != FEATURES]
            covariate_config = dataclasses.replace(
                config, batch_size=max(config.batch_size, COVARIATE_BATCH_SIZE),
                learning_rate=10 * config.learning_rate)
            covariate_training = train_scm(scm, values, covariate_config, strata=strata, nodes=covariates,
                                           label="flow-SCM covariates")
            self.training_ = train_scm(scm, values, config, strata=strata, nodes=[FEATURES],
                                       label="flow-SCM features")
            self.training_["covariates"] = {
                key: covariate_training[key]
                for key in ("best_epoch", "best_validation_nll", "final_train_nll", "nodes", "seconds", "config")}
        self.graph_ = graph
        self.scm_ = scm

    # ------------------------------------------------------------------ queries
    def _check_scm(self) -> None:
        self._check_fitted()
        if getattr(self, "scm_", None) is None:  # pragma: no cover - defensive
            raise NotFittedError("the flow-SCM has no trained model")

    def _warn_age(self, age: np.ndarray) -> None:
        summary = self.covariate_summary_["age"]
        validation.warn_outside_fitted_range(age, summary["min"], summary["max"],
                                             action="extrapolated by the context network")

    def _do_values(self, do: dict, n: int) -> dict:
        """User-level interventions (labels, years, codes) -> SCM values."""
        allowed = ("site", "age", "sex", *self.extra_covariates)
        unknown = sorted(set(do) - set(allowed))
        if unknown:
            raise HarmonizerParameterError(
                f"cannot intervene on {unknown}; the model's covariates are {', '.join(allowed)}")
        result = {}
        for name, value in do.items():
            series = pd.Series(np.broadcast_to(np.asarray(value, dtype=object), (n,)))
            if name == "site":
                codes, labels = validation.site_codes(pd.DataFrame({"site": series}), self.sites_)
                result[name] = torch.as_tensor(validation.label_positions(codes, labels, self.sites_),
                                               dtype=torch.long)
            elif name == "sex":
                result[name] = torch.as_tensor(validation.normalize_sex(series, self.sex_coding_), dtype=torch.long)
            elif name == "age":
                ages = validation.age_array(pd.DataFrame({"age": series}))
                self._warn_age(ages)
                result[name] = torch.as_tensor(ages, dtype=DTYPE).view(-1, 1)
            else:
                numbers = validation.extra_array(pd.DataFrame({name: series}), name)
                kind = self.extra_kinds_[name]
                result[name] = (torch.as_tensor(numbers, dtype=torch.long) if kind == "binary"
                                else torch.as_tensor(numbers, dtype=DTYPE).view(-1, 1))
        return result

    def _map_rows(self, compute, tensors: dict, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write ``compute(tensors at rows)`` into those rows of ``out``, chunk by chunk.

        Every chunk has exactly ``_CHUNK_ROWS`` rows (the last one padded by repeating its
        last row) and runs on one torch thread, with its matrix products summed in a fixed
        order (:func:`~bidsharmony.utils.rowwise_torch.fixed_order_products`): a row's numbers
        then depend on that row alone, not on the number of rows, their order or
        ``num_threads`` (a BLAS rounds a product of another shape, thread split or row position
        differently in the last bits). With ``num_threads > 1`` the chunks run in that
        many Python threads: the compiled kernels release the GIL. Chunks also bound memory.
        """

        def work(chunk) -> None:
            start, stop, positions = chunk
            # index_select copies whole rows (advanced indexing goes element by element)
            selected = torch.as_tensor(rows[positions])
            with fixed_order_products():  # per thread: torch's function modes are thread-local
                result = compute({k: v.index_select(0, selected) for k, v in tensors.items()})
            out[rows[start:stop]] = result[:stop - start].numpy()

        chunks = list(padded_chunks(len(rows), _CHUNK_ROWS))
        with torch_threads(1):
            if self.num_threads > 1 and len(chunks) > 1:
                list(_chunk_workers(self.num_threads).map(work, chunks))
            else:
                for chunk in chunks:
                    work(chunk)
        return out

    def _counterfactual_array(self, values: dict, do: dict, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write the counterfactual features of ``rows`` (under ``do``) into those rows of ``out``."""
        tensors = {**{("value", k): v for k, v in values.items()}, **{("do", k): v for k, v in do.items()}}

        def compute(part: dict) -> torch.Tensor:
            observed = {k: v for (kind, k), v in part.items() if kind == "value"}
            intervened = {k: v for (kind, k), v in part.items() if kind == "do"}
            return self.scm_.counterfactual(observed, intervened)[FEATURES]

        return self._map_rows(compute, tensors, rows, out)

    def _transform(self, data: validation.PreparedData) -> np.ndarray:
        self._check_scm()
        self._warn_age(data.age)
        harmonized = data.features.copy()  # reference-site rows stay bit-identical
        values = self._values(data)
        reference = self.sites_.index(self.reference_site_)
        rows = np.flatnonzero(values["site"].numpy() != reference)
        if len(rows):
            do = {"site": torch.full((data.n_rows,), reference, dtype=torch.long)}
            self._counterfactual_array(values, do, rows, out=harmonized)
        return harmonized

    def counterfactual(self, features: pd.DataFrame, covariates: pd.DataFrame, do: dict) -> pd.DataFrame:
        """Features under an intervention on the covariates: ``x'`` given ``do(...)``.

        Parameters
        ----------
        features, covariates : pandas.DataFrame
            Observed scans (as for ``transform``).
        do : dict
            ``{"site": label, "age": years, "sex": code, <extra>: value}``; each value a scalar
            (applied to every row) or one value per row. ``do(site=own site)`` reproduces the
            input up to floating-point error.

        Returns
        -------
        pandas.DataFrame
            Counterfactual features, same index and columns as ``features``.
        """
        self._check_scm()
        data = self._prepare(features, covariates, fitted=True)
        self._warn_age(data.age)
        values = self._values(data)
        interventions = self._do_values(do, data.n_rows)
        out = np.empty_like(data.features)
        self._counterfactual_array(values, interventions, np.arange(data.n_rows), out)
        self._check_positive_output(data, out)
        return data.to_frame(out)

    def log_prob(self, features: pd.DataFrame, covariates: pd.DataFrame, joint: bool = False) -> pd.Series:
        """Log-density of each scan under the fitted SCM.

        Parameters
        ----------
        features, covariates : pandas.DataFrame
        joint : bool
            ``False``: ``log p(x | s, a, t)``; ``True``: ``log p(x, s, a, t)`` (adds the sex,
            site and age terms).

        Returns
        -------
        pandas.Series
            Nats per scan, as a density over the features in their own units (e.g. mm³; the
            log and standardisation Jacobians are included) and age in years.
        """
        self._check_scm()
        data = self._prepare(features, covariates, fitted=True)
        values = self._values(data)

        def compute(part: dict) -> torch.Tensor:
            terms = evaluate_log_prob(self.scm_, part)
            return terms[FEATURES] if not joint else torch.stack(list(terms.values())).sum(dim=0)

        total = self._map_rows(compute, values, np.arange(data.n_rows), np.empty(data.n_rows))
        return pd.Series(total, index=data.index, name="log_prob")

    def sample(self, n: int, covariates: pd.DataFrame | None = None, seed: int | None = None):
        """Draw scans from the model.

        Parameters
        ----------
        n : int
            Number of rows (ignored when ``covariates`` is given: one row per covariate row).
        covariates : pandas.DataFrame, optional
            Sample ``x | do(s, a, t)`` for these covariates; otherwise sample everything.
        seed : int, optional
            Default: the model's ``random_seed``.

        Returns
        -------
        pandas.DataFrame or (pandas.DataFrame, pandas.DataFrame)
            Features given ``covariates``; else ``(features, covariates)``.
        """
        self._check_scm()
        generator = torch.Generator()
        generator.manual_seed(self.random_seed if seed is None else int(seed))
        with torch_threads(self.num_threads):
            if covariates is not None:
                validation.covariate_columns_present(covariates, self.extra_covariates)
                do = self._do_values({c: covariates[c].to_numpy() for c in
                                      ("site", "age", "sex", *self.extra_covariates)}, len(covariates))
                drawn = self.scm_.sample(len(covariates), do=do, generator=generator)
                return pd.DataFrame(drawn[FEATURES].numpy(), index=covariates.index, columns=self.feature_names_)
            drawn = self.scm_.sample(int(n), generator=generator)
        features = pd.DataFrame(drawn[FEATURES].numpy(), columns=self.feature_names_)
        covariates = pd.DataFrame({
            "site": np.asarray(self.sites_, dtype=object)[drawn["site"].numpy()],
            "age": drawn["age"].numpy()[:, 0],
            "sex": np.where(drawn["sex"].numpy() == 1, "M", "F"),
        })
        for name in self.extra_covariates:
            values = drawn[name].numpy()
            covariates[name] = values if values.ndim == 1 else values[:, 0]
        return features, covariates

    # ------------------------------------------------------------------ new sites
    def adapt_new_sites(self, features: pd.DataFrame, covariates: pd.DataFrame, *, epochs: int = 100,
                        learning_rate: float = 1e-2, batch_size: int | None = None,
                        weight_decay: float | None = None, validation_fraction: float | None = None,
                        patience: int | None = 20, min_subjects_per_site: int | None = None,
                        random_seed: int | None = None) -> "FlowSCMHarmonizer":
        """Add the sites of ``covariates`` that the model has not seen, fitting only their
        conditioning while every fitted weight stays frozen.

        A site acts on the feature mechanism through its one-hot column in the parents'
        encoding, so each layer reading that encoding holds one column of weights per site.
        This inserts a column for each new site (at its place in the sorted site list) and
        learns only those columns by maximum likelihood of the new site's scans (``log p(x |
        s, a, t)``); the new site's logit in the site prior gives it its share of the scans.
        Afterwards :meth:`transform` maps the new sites' scans to the reference site like any
        other; known sites are harmonized as before (the frozen weights are bit-identical).

        Parameters
        ----------
        features, covariates : pandas.DataFrame
            Scans as for ``transform``. Rows of sites the model already knows are ignored here
            (pass the whole table you are about to harmonize).
        epochs : int
            Training epochs over the new sites' scans.
        learning_rate : float
            Adam's learning rate (higher than the fit's: only a few columns are learned),
            divided by 10 at 50 % and 75 % of the epochs.
        batch_size, weight_decay, validation_fraction : optional
            Default to the fit's settings. The validation split (stratified by new site)
            selects the best epoch.
        patience : int, optional
            Stop when the validation NLL has not improved for this many epochs.
        min_subjects_per_site : int, optional
            A new site needs at least this many scans (default: the fit's minimum).
        random_seed : int, optional
            Seeds the split and the batch order (default: the model's seed).

        Returns
        -------
        self

        Raises
        ------
        NotEnoughSubjectsError
            A new site has too few scans to learn its conditioning.
        """
        self._check_scm()
        validation.check_tables(features, covariates)
        validation.covariate_columns_present(covariates, self.extra_covariates)
        sites = validation.site_array(covariates)
        new_sites = sorted(set(sites) - set(self.sites_))
        if not new_sites:
            LOGGER.info("flow-SCM: every site in the table is known to the model; nothing to adapt")
            return self
        rows = np.isin(sites, new_sites)
        data = validation.prepare(
            features[rows], covariates[rows], feature_names=self.feature_names_,
            sex_coding=self.sex_coding_, extra_covariates=self._extra_covariates(),
            require_positive=self._requires_positive_features)
        minimum = self.min_subjects_per_site if min_subjects_per_site is None else \
            validation.check_positive_int("min_subjects_per_site", min_subjects_per_site, minimum=2)
        counts = {site: int((data.site == site).sum()) for site in new_sites}
        small = {site: count for site, count in counts.items() if count < minimum}
        if small:
            raise NotEnoughSubjectsError(
                f"new site(s) {', '.join(f'{k} ({v})' for k, v in small.items())} have fewer than "
                f"{minimum} scans, too few to learn a site's conditioning; add scans or lower "
                "min_subjects_per_site")
        self._warn_age(data.age)
        all_sites = sorted([*self.sites_, *new_sites])
        code_map = [all_sites.index(site) for site in self.sites_]
        graph = CausalGraph([{**spec, "categories": len(all_sites)} if spec["name"] == "site" else spec
                             for spec in self.graph_.to_list()])
        old_total = int(sum(self.site_counts_.get(site, 0) for site in self.sites_)) or 1
        prior = adaptation.prior_logits_for(
            adaptation.categorical_root(self.scm_, "site").free_logits, old_total,
            {all_sites.index(site): count for site, count in counts.items()})
        seed = self.random_seed if random_seed is None else int(random_seed)
        with torch_threads(self.num_threads):
            scm = self._build(graph)
            slots = adaptation.expand_sites(self.scm_, scm, "site", code_map, prior)
            previous_sites, self.sites_ = self.sites_, all_sites  # codes of the larger model
            try:
                values = self._values(data)
            finally:
                self.sites_ = previous_sites
            LOGGER.info("flow-SCM: adapting to new site(s) %s (%s scans): %d new weights, %d frozen",
                        ", ".join(new_sites), ", ".join(str(counts[s]) for s in new_sites),
                        sum(int(initial.numel()) for _, initial in slots.values()),
                        flows.count_parameters(self.scm_))
            history = adaptation.fit_new_columns(
                scm, slots, FEATURES, values, epochs=validation.check_positive_int("epochs", epochs),
                batch_size=self.batch_size if batch_size is None else int(batch_size),
                learning_rate=float(learning_rate),
                weight_decay=self.weight_decay if weight_decay is None else float(weight_decay),
                validation_fraction=(
                    self.validation_fraction if validation_fraction is None
                    else validation.check_fraction("validation_fraction", validation_fraction, 0.0, 0.9)),
                patience=None if patience is None else validation.check_positive_int("patience", patience),
                seed=seed, strata=values["site"].numpy())
        scm.eval()
        # bookkeeping: the model now knows the new sites, marked as adapted
        self.scm_, self.graph_, self.sites_ = scm, graph, all_sites
        self.site_counts_ = {site: int(self.site_counts_.get(site, counts.get(site, 0))) for site in all_sites}
        summary = validation.covariate_summary(data)
        for key in ("age", "sex"):
            self.covariate_summary_[key]["by_site"].update(summary[key]["by_site"])
        adapted = dict(getattr(self, "adapted_sites_", {}))
        for site in new_sites:
            adapted[site] = {
                "adapted": True, "n_scans": counts[site],
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "epochs_run": len(history["epochs"]), "best_epoch": history["best_epoch"],
                "initial_nll": history["initial_nll"], "best_nll": history["best_nll"],
                "nll_monitored": history["monitored"], "learning_rate": float(learning_rate),
                "random_seed": seed, "new_weights": {name: len(columns) for name, (columns, _) in slots.items()},
            }
        self.adapted_sites_ = adapted
        LOGGER.info("flow-SCM: adapted %s in %.1f s; feature NLL per scan %.3f -> %.3f (%s)",
                    ", ".join(new_sites), history["seconds"], history["initial_nll"],
                    history["best_nll"], history["monitored"])
        return self

    @property
    def training_log_likelihood_(self) -> dict:
        """The fit's log-likelihoods in nats per scan (for sidecars): the features' mechanism
        on the validation and training rows at the best epoch, and every node's on validation."""
        self._check_fitted()
        history = self.training_
        validation, train = history.get("best_validation_nll"), history.get("final_train_nll")
        return {
            "Units": "nats per scan",
            "BestEpoch": history.get("best_epoch"),
            "FeaturesValidation": None if validation is None else -validation,
            "FeaturesTrain": None if train is None else -train,
            "ValidationPerNode": {node: -nll for node, nll in history.get("per_node_nll", {}).items()},
        }

    @property
    def training_history(self) -> dict:
        """Per-epoch train/validation NLL and the selected epoch (from fit)."""
        self._check_fitted()
        return self.training_

    # ------------------------------------------------------------------ state
    def _get_state(self):
        state = {"graph": self.graph_.to_list(), "feature_node": FEATURES,
                 "extra_kinds": self.extra_kinds_, "training": self.training_,
                 "sequential_inverse": flows.transform_is_sequential(self.scm_),
                 # sites added after the fit by adapt_new_sites (their conditioning only)
                 "adapted_sites": getattr(self, "adapted_sites_", {})}
        arrays = {f"scm.{k}": v.detach().cpu().numpy() for k, v in self.scm_.state_dict().items()}
        return state, arrays

    def _set_state(self, state, arrays):
        self.extra_kinds_ = dict(state.get("extra_kinds", {}))
        self.training_ = state.get("training", {})
        self.adapted_sites_ = dict(state.get("adapted_sites", {}))
        graph = CausalGraph(state["graph"])
        with torch_threads(self.num_threads):
            scm = self._build(graph)
        weights = {k[len("scm."):]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                   if k.startswith("scm.")}
        scm.load_state_dict(weights, strict=True)
        scm.eval()
        self.graph_ = graph
        self.scm_ = scm
