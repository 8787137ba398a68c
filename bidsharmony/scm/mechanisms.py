"""Structural assignments ``x_k := f_k(eps_k; pa_k)`` with tractable abduction.

Two kinds (Pawlowski et al. 2020, Section 2.2 and Appendix C):

:class:`CategoricalMechanism`
    Gumbel-max parametrisation ``y := argmax_l(eps_l + lambda_l(pa))``,
    ``eps_l ~ Gumbel(0, 1)`` (Eq. C.2), i.e. ``P(y = k | pa) = softmax(lambda)_k``. Abduction
    draws from the exact noise posterior given the observed category (Eq. C.3), so
    counterfactuals of a discrete child follow ``argmax(eps + lambda(pa'))`` (Eq. C.4). With no
    parents the logits are free parameters (``Bernoulli(p_S)``, ``Categorical(K, p_T)``).
:class:`FlowMechanism`
    Invertible, explicit likelihood (Eq. 1):
    ``x := exp(shift + scale * T^-1(eps; c(pa)))`` — a conditional normalizing flow ``T``
    whose context ``c`` is computed from the parents' encodings, then a fixed affine
    de-normalisation and (optionally) ``exp``, as in Pawlowski et al. (Eqs. B.1-B.3).
    Abduction is exact: ``eps = f^-1(x; pa)``.

Each mechanism also says how its node looks as a parent (:meth:`Mechanism.encode`): binary
as 0/1, categorical one-hot, continuous by its normalised value.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import flows
from .graph import NodeSpec

_LOG_2PI = math.log(2 * math.pi)


def gumbel(shape, generator=None, dtype=torch.float64) -> torch.Tensor:
    """Gumbel(0, 1) samples ``-log(-log U)``."""
    uniform = torch.rand(shape, generator=generator, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    return -torch.log(-torch.log(uniform.clamp(min=tiny, max=1 - 1e-16)))


class Mechanism(nn.Module):
    """Base class: one node's structural assignment."""

    discrete = False

    def __init__(self, spec: NodeSpec, parent_widths: dict):
        super().__init__()
        self.spec = spec
        self.parent_widths = dict(parent_widths)
        self.parent_features = sum(self.parent_widths.values())

    @property
    def encoding_features(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, value: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """How the node's value enters a child's context, ``(n, encoding_features)``."""
        raise NotImplementedError

    def initialise(self, value: torch.Tensor, context=None) -> None:
        """Set data-dependent constants (normalisation, initial logits) before training."""

    def log_prob(self, value, context):  # pragma: no cover - abstract
        raise NotImplementedError

    def abduct(self, value, context, generator=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, noise, context):  # pragma: no cover - abstract
        raise NotImplementedError

    def sample_noise(self, n: int, generator=None):  # pragma: no cover - abstract
        raise NotImplementedError


class CategoricalMechanism(Mechanism):
    """Gumbel-max categorical mechanism (binary or K categories).

    Parameters
    ----------
    spec : NodeSpec
    parent_widths : dict
        ``{parent: encoding width}`` in the order of ``spec.parents`` (empty for a root).
    hidden_features : sequence of int
        Hidden layers of the logit network (parents only).
    """

    discrete = True

    def __init__(self, spec: NodeSpec, parent_widths: dict, hidden_features=(32,)):
        super().__init__(spec, parent_widths)
        self.categories = int(spec.categories)
        if self.parent_features:
            self.logit_net = flows.ContextNetwork(self.parent_features, hidden_features, self.categories)
            self.free_logits = None
        else:
            self.logit_net = None
            self.free_logits = nn.Parameter(torch.zeros(self.categories))

    @property
    def encoding_features(self) -> int:
        return 1 if self.categories == 2 else self.categories

    def encode(self, value):
        if self.categories == 2:
            return value.to(self._dtype()).view(-1, 1)
        return F.one_hot(value.long(), self.categories).to(self._dtype())

    def _dtype(self):
        return next(self.parameters()).dtype

    def logits(self, n: int, context) -> torch.Tensor:
        if self.logit_net is None:
            return self.free_logits.expand(n, -1)
        return self.logit_net(context)

    def initialise(self, value, context=None):
        if self.logit_net is None:
            counts = torch.bincount(value.long(), minlength=self.categories).to(self.free_logits.dtype)
            with torch.no_grad():
                self.free_logits.copy_(torch.log((counts + 0.5) / (counts.sum() + 0.5 * self.categories)))

    def log_prob(self, value, context):
        logits = self.logits(value.shape[0], context)
        return torch.log_softmax(logits, dim=-1).gather(-1, value.long().view(-1, 1))[:, 0]

    def sample_noise(self, n, generator=None):
        return gumbel((n, self.categories), generator, self._dtype())

    def predict(self, noise, context):
        """Eq. C.2/C.4: ``argmax_l(eps_l + lambda_l)``."""
        return torch.argmax(noise + self.logits(noise.shape[0], context), dim=-1)

    def abduct(self, value, context, generator=None):
        """Eq. C.3: a draw from ``P(eps | y = k, pa)``.

        The winning coordinate is a Gumbel located at ``logsumexp(lambda) - lambda_k``; the
        others are Gumbels truncated below the winner's total.
        """
        logits = self.logits(value.shape[0], context)
        draws = gumbel(logits.shape, generator, logits.dtype)
        k = value.long().view(-1, 1)
        logit_k = logits.gather(-1, k)
        noise_k = draws.gather(-1, k) + torch.logsumexp(logits, dim=-1, keepdim=True) - logit_k
        top = noise_k + logit_k
        others = -torch.logaddexp(-draws - logits, -top) - logits
        return others.scatter(-1, k, noise_k)


class FlowMechanism(Mechanism):
    """Continuous mechanism: normalisation (log, fixed affine) + conditional flow.

    Data -> noise: ``u = (log x - shift) / scale`` (log optional), ``eps = T(u; c)``. The flow's
    context ``c`` is ``[encodings of the parents, ContextNetwork(encodings of the parents
    not in spec.additive_parents)]``: every parent acts linearly on the flow's parameters,
    and the network adds non-linear effects and interactions of the others. Parents listed in
    ``additive_parents`` (the site, by default) therefore shift the flow's parameters by a
    constant per level, with no interaction with age or sex — the assumption that makes
    site effects identifiable when sites cover different ages.

    The spline *shapes* depend on the whole context (``spec.spline_conditioning="all"``, the
    paper's conditional spline) or only on the discrete parents' encodings (``"discrete"``:
    one spline per site x sex; location and scale still follow every parent).

    Parameters
    ----------
    spec : NodeSpec
    parent_widths : dict
        ``{parent: encoding width}`` in the order of ``spec.parents``.
    discrete_parents : collection of str
        Parents that are discrete (binary/categorical).
    context_hidden : sequence of int
        Hidden layers of the context network.
    context_features : int
        Width of the context embedding fed to the flow.
    hidden_features, num_bins, tail_bound
        Flow settings, see :func:`~bidsharmony.scm.flows.build_feature_flow`.
    """

    def __init__(self, spec: NodeSpec, parent_widths: dict, *, discrete_parents=(),
                 context_hidden=(64, 64), context_features: int = 32, hidden_features: int = 64,
                 num_bins: int = 8, tail_bound: float = 4.0):
        super().__init__(spec, parent_widths)
        self.dim = int(spec.dim)
        self.log_transform = bool(spec.log_transform)
        network_columns, discrete_columns, start = [], [], 0
        #: one-hot columns of each categorical parent (the site): their levels get their own
        #: initial scale (see initialise)
        self.level_columns = []
        for parent, width in self.parent_widths.items():
            if parent not in spec.additive_parents:
                network_columns.extend(range(start, start + width))
            if parent in discrete_parents:
                discrete_columns.extend(range(start, start + width))
                if width > 1:
                    self.level_columns.append(list(range(start, start + width)))
            start += width
        self.register_buffer("network_columns", torch.tensor(network_columns, dtype=torch.long))
        embedded = self.parent_features or None
        self.context_net = None
        if network_columns:
            self.context_net = flows.ContextNetwork(len(network_columns), context_hidden, context_features)
            embedded += context_features
        self.transform = flows.build_feature_flow(
            self.dim, embedded, flow=spec.flow, architecture=spec.architecture,
            num_layers=spec.num_layers, hidden_features=hidden_features, num_bins=num_bins,
            tail_bound=tail_bound, correlated=spec.correlated,
            shape_columns=discrete_columns if spec.spline_conditioning == "discrete" else None)
        self.register_buffer("shift", torch.zeros(self.dim))
        self.register_buffer("scale", torch.ones(self.dim))

    @property
    def encoding_features(self) -> int:
        return self.dim

    def initialise(self, value, context=None):
        """Fix the normalisation and start the flow at ComBat's location-scale model.

        The first conditional element-wise layer's location is set to the least-squares
        regression of the normalised values on the parents' encodings (an additive effect of
        each site, sex and log-age), and its scale to the residual SD of each level of every
        categorical parent (each site's own spread, the multiplicative effect of ComBat;
        Johnson et al. 2007, without the empirical-Bayes shrinkage). Training starts from that
        closed-form fit and bends it (non-linear age, spline shapes); with the paper's small
        learning rate it would otherwise not reach even the per-site scales in 100 epochs
        (FCON1000: BENCHMARKS.md, "Why flow-SCM loses here").
        """
        logged = torch.log(value) if self.log_transform else value
        self.shift.copy_(logged.mean(dim=0))
        self.scale.copy_(logged.std(dim=0).clamp(min=1e-8))
        first = self.transform._transforms[0]
        if not isinstance(first, flows.ConditionalElementwiseTransform):
            return
        normalised = (logged - self.shift) / self.scale
        if context is None or first.affine_head is None:
            design = torch.ones_like(normalised[:, :1])
        else:
            design = torch.cat([torch.ones_like(context[:, :1]), context], dim=1)
        coefficients = torch.linalg.lstsq(design, normalised, driver="gelsd").solution
        residuals = normalised - design @ coefficients
        residual_sd = residuals.std(dim=0).clamp(min=0.05)
        scale_slopes = None
        if design.shape[1] > 1 and self.level_columns:
            scale_slopes = torch.zeros(self.dim, context.shape[1], dtype=normalised.dtype)
            pooled = first.raw_scale(residual_sd)
            for columns in self.level_columns:
                for column in columns:
                    rows = context[:, column] > 0.5
                    if int(rows.sum()) >= 3:  # a level seen too rarely keeps the pooled scale
                        level_sd = residuals[rows].std(dim=0).clamp(min=0.05)
                        scale_slopes[:, column] = first.raw_scale(level_sd) - pooled
        first.set_affine(coefficients[0], coefficients[1:].T if design.shape[1] > 1 else None, residual_sd,
                         scale_slopes)

    def normalise(self, value):
        """Fixed normalisation to roughly unit scale, and its log-Jacobian per row."""
        logged = torch.log(value) if self.log_transform else value
        normalised = (logged - self.shift) / self.scale
        logabsdet = -torch.log(self.scale).sum().expand(value.shape[0])
        if self.log_transform:
            logabsdet = logabsdet - logged.sum(dim=-1)
        return normalised, logabsdet

    def denormalise(self, normalised):
        logged = normalised * self.scale + self.shift
        return torch.exp(logged) if self.log_transform else logged

    def encode(self, value):
        return self.normalise(value)[0]

    def embed(self, context):
        if context is None or self.context_net is None:
            return context
        return torch.cat([context, self.context_net(context[:, self.network_columns])], dim=-1)

    def log_prob(self, value, context):
        normalised, norm_lad = self.normalise(value)
        noise, flow_lad = self.transform(normalised, context=self.embed(context))
        base = -0.5 * (noise ** 2).sum(dim=-1) - 0.5 * self.dim * _LOG_2PI
        return base + flow_lad + norm_lad

    def _conditional_layers(self) -> list:
        """The flow's layers up to the last one that depends on the context.

        Trailing unconditional layers (the copula) map the abducted noise and map it straight
        back in a counterfactual, so :meth:`transport` skips them: faster, and exact.
        """
        layers = list(self.transform._transforms)
        while layers and isinstance(layers[-1], flows.UNCONDITIONAL_LAYERS):
            layers.pop()
        return layers

    def abduct(self, value, context, generator=None):
        normalised, _ = self.normalise(value)
        noise, _ = self.transform(normalised, context=self.embed(context))
        return noise

    def predict(self, noise, context):
        normalised, _ = self.transform.inverse(noise, context=self.embed(context))
        return self.denormalise(normalised)

    def transport(self, value, context, new_context):
        """Counterfactual of one node: abduction with ``context``, prediction with ``new_context``.

        Equal to ``predict(abduct(value, context), new_context)`` but skips the unconditional
        trailing layers, which cancel; element-wise layers run compiled, values only
        (:meth:`_transport_compiled`).
        """
        layers = self._conditional_layers()
        if layers and all(isinstance(layer, flows.ConditionalElementwiseTransform) for layer in layers):
            return self._transport_compiled(value, context, new_context, layers)
        latent, _ = self.normalise(value)
        embedded = self.embed(context)
        for layer in layers:
            if isinstance(layer, flows.ConditionalElementwiseTransform):
                latent = layer.map(latent, embedded)  # values only: no log-determinants needed
            else:
                latent, _ = layer(latent, context=embedded)
        embedded = self.embed(new_context)
        for layer in reversed(layers):
            if isinstance(layer, flows.ConditionalElementwiseTransform):
                latent = layer.map(latent, embedded, inverse=True)
            else:
                latent, _ = layer.inverse(latent, context=embedded)
        return self.denormalise(latent)

    @torch.no_grad()
    def _transport_compiled(self, value, context, new_context, layers):
        """:meth:`transport` through element-wise layers with compiled kernels.

        The context network runs once when the intervention leaves its inputs unchanged (an
        additive site is not one of them); logarithms and exponentials run vectorised in torch.
        """
        # in place: every pass over a chunk's fresh temporaries costs as much as the arithmetic
        logged = torch.log(value) if self.log_transform else value.clone()
        latent = logged.sub_(self.shift).div_(self.scale).numpy()
        embedded = self.embed(context)
        if (self.context_net is not None and context is not None and new_context is not None
                and torch.equal(context[:, self.network_columns], new_context[:, self.network_columns])):
            new_embedded = torch.cat([new_context, embedded[:, context.shape[1]:]], dim=-1)
        else:
            new_embedded = self.embed(new_context)
        *outer, innermost = layers
        for layer in outer:
            latent = layer.map_compiled(latent, embedded)
        latent = innermost.transport_compiled(latent, embedded, new_embedded)
        for layer in reversed(outer):
            latent = layer.map_compiled(latent, new_embedded, inverse=True)
        logged = torch.from_numpy(latent).mul_(self.scale).add_(self.shift)
        return logged.exp_() if self.log_transform else logged

    def sample_noise(self, n, generator=None):
        return torch.randn((n, self.dim), generator=generator, dtype=self.shift.dtype)


def build_mechanism(spec: NodeSpec, parent_widths: dict, discrete_parents=(), **options) -> Mechanism:
    """The mechanism for ``spec`` (options go to :class:`FlowMechanism`)."""
    if spec.discrete:
        return CategoricalMechanism(spec, parent_widths)
    return FlowMechanism(spec, parent_widths, discrete_parents=discrete_parents, **options)
