"""Conditional normalizing flows used as SCM mechanisms (built on nflows).

Conventions follow nflows: a transform's ``forward`` maps **data to noise** (the abduction
direction, ``eps = f^-1(x; context)``) and returns ``log |det d eps / d x|``; ``inverse``
maps noise to data (the generative / prediction direction).

Two architectures carry the three flow types of Wang et al. (2021):

``"elementwise"`` (default)
    Each feature gets its own monotone map whose parameters a context network predicts from
    the parents: ``u = (x - loc(c)) / scale(c)``, ``eps' = spline_c(u)`` (no spline for
    ``"affine"``), followed by an *unconditional* learned linear map that models the
    correlation between features (a Gaussian copula, :class:`CholeskyCorrelation`). Both
    directions are one closed-form pass, so abduction and prediction of 10,000 x 145 take
    well under a second. Because the linear map does not depend on the parents it cancels in every
    counterfactual: ``x' = f_c'^-1(f_c(x))`` feature by feature — a conditional quantile
    mapping, exact in both directions.
``"autoregressive"`` (the paper's masked autoregressive flows)
    A conditional element-wise affine layer, then ``num_layers`` masked autoregressive layers
    (nflows ``MADE``; affine, rational-quadratic, or the linear-rational spline below) with
    the feature order reversed between layers. Abduction is one pass; prediction needs one
    pass *per feature* per layer (nflows inverts autoregressive layers sequentially) — slow
    for 145 features, see BENCHMARKS.md.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nflows.transforms.autoregressive import AutoregressiveTransform
from nflows.transforms import made as made_module
from nflows.transforms.base import CompositeTransform, Transform
from nflows.transforms.permutations import ReversePermutation

from ..utils.rowwise import padded_chunks
from . import kernels, splines

FLOWS = ("affine", "linear-spline", "quadratic-spline")
ARCHITECTURES = ("elementwise", "autoregressive")
_SCALE_FLOOR = 1e-3
#: the shape head runs on the distinct levels of a chunk in blocks of exactly this many rows
_LEVEL_BLOCK = 64
_UNIT_SCALE = math.log(math.expm1(1.0 - _SCALE_FLOOR))  # softplus^-1 so the initial scale is 1


def _positive_scale(raw: torch.Tensor) -> torch.Tensor:
    """``softplus(raw) + floor`` for transforms (no autograd), as ``log(1 + exp(raw))``.

    torch's float64 ``softplus`` is not vectorised on CPU and costs ~1.6x the vectorised
    ``exp`` and ``log`` here (~20 % of a transform). Up to 20 the two agree to ~1e-15. Above,
    torch returns ``raw`` (its threshold, off by < 2e-9); here ``exp`` sees at most 20 (no
    overflow) and the maximum returns ``raw`` from 20 + 2e-9 on.
    """
    return torch.maximum(raw, raw.clamp(max=20.0).exp_().add_(1.0).log_()).add_(_SCALE_FLOOR)


class ContextNetwork(nn.Module):
    """Fully-connected network over the parents' encodings ``[s, a, one-hot t, ...]``.

    Parameters
    ----------
    in_features : int
    hidden_features : sequence of int
        Widths of the hidden layers (LeakyReLU 0.1 between them).
    out_features : int
    """

    def __init__(self, in_features: int, hidden_features, out_features: int):
        super().__init__()
        layers, width = [], in_features
        for hidden in hidden_features:
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.1)]
            width = hidden
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)


def _in_fixed_blocks(function, rows: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``function(rows)`` evaluated on blocks of exactly ``_LEVEL_BLOCK`` rows, joined on ``dim``.

    How many distinct levels a chunk has depends on which scans are in it. A matrix product
    with another number of rows rounds differently, and torch's vectorised ``exp``/``log``
    treat the last few elements of a tensor with a scalar formula; on blocks of one shape, a
    multiple of the vector width, a level's numbers depend on that level alone.
    """
    blocks = [function(rows.index_select(0, torch.as_tensor(positions))).narrow(dim, 0, stop - start)
              for start, stop, positions in padded_chunks(rows.shape[0], _LEVEL_BLOCK)]
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=dim)


def _distinct_rows(codes: torch.Tensor):
    """Distinct rows of a 0/1 matrix and each row's level: ``(levels, which)``.

    Rows are keyed by their bits (exact in float64 up to 52 columns), which is much faster
    than ``torch.unique(dim=0)``; wider matrices fall back to it.
    """
    if codes.shape[1] > 52:
        return torch.unique(codes, dim=0, return_inverse=True)
    weights = 2.0 ** torch.arange(codes.shape[1], dtype=torch.float64)
    keys = (codes.to(torch.float64) @ weights).long()
    distinct, which = torch.unique(keys, return_inverse=True)
    representative = torch.zeros(len(distinct), dtype=torch.long)
    representative[which] = torch.arange(len(keys))  # any row of a level will do: they are equal
    return codes[representative], which


class ConditionalElementwiseTransform(Transform):
    """Per-feature affine (+ optional spline) map with parameters predicted from a context.

    Data -> noise: ``u = (x - loc(c)) / scale(c)``; ``eps = spline_c'(u)`` (identity for
    ``"affine"``). Location and scale are a linear function of the whole context ``c``. The
    spline's shape is a linear function of ``c' = c[:, shape_columns]``:

    * ``shape_columns=None`` — the whole context (the paper's conditional spline): every row
      has its own spline;
    * a list of columns holding discrete encodings (0/1, one-hot) — one spline per distinct
      value of those columns (e.g. per site and sex). Rows then share knot tables instead of
      each computing its own, which makes training ~3x and transforms ~10x faster;
    * ``[]`` — one unconditional spline per feature.

    Parameters
    ----------
    features : int
        Number of features ``D``.
    context_features : int or None
        Width of the context; ``None`` makes every parameter free (unconditional).
    flow : {"affine", "linear-spline", "quadratic-spline"}
    num_bins : int
        Spline bins.
    tail_bound : float
        Spline interval ``[-B, B]``; identity outside.
    shape_columns : list of int, optional
        Context columns the spline shape depends on (see above).
    """

    def __init__(self, features: int, context_features: int | None, flow: str = "affine",
                 num_bins: int = 8, tail_bound: float = 4.0, shape_columns=None):
        super().__init__()
        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {FLOWS}, got {flow!r}")
        self.features = features
        self.flow = flow
        self.spline = splines.SPLINE_OF_FLOW.get(flow)
        self.num_bins = num_bins
        self.tail_bound = float(tail_bound)
        # location / scale: zero weights, unit scale -> the identity for every context
        affine_bias = torch.zeros(features, 2, dtype=torch.float64)
        affine_bias[:, 1] = _UNIT_SCALE
        if context_features is None:
            self.affine_head = None
            self.free_affine = nn.Parameter(affine_bias)
        else:
            self.affine_head = nn.Linear(context_features, features * 2)
            nn.init.zeros_(self.affine_head.weight)
            with torch.no_grad():
                self.affine_head.bias.copy_(affine_bias.reshape(-1))
            self.free_affine = None
        self.shape_head, self.free_shape = None, None
        if self.spline:
            self.params_per_feature = splines.parameters_per_element(self.spline, num_bins)
            identity = splines.identity_parameters(self.spline, num_bins).repeat(features, 1)
            if context_features is None or (shape_columns is not None and len(shape_columns) == 0):
                self.free_shape = nn.Parameter(identity)
            else:
                columns = list(range(context_features)) if shape_columns is None else list(shape_columns)
                self.per_row_shape = shape_columns is None
                self.register_buffer("shape_columns", torch.tensor(columns, dtype=torch.long))
                self.shape_head = nn.Linear(len(columns), features * self.params_per_feature)
                nn.init.zeros_(self.shape_head.weight)
                with torch.no_grad():
                    self.shape_head.bias.copy_(identity.reshape(-1))

    # ---------------------------------------------------------------- parameters
    @staticmethod
    def raw_scale(scale: torch.Tensor) -> torch.Tensor:
        """The head's output that gives the positive scale ``scale`` (inverse of the softplus)."""
        return torch.log(torch.expm1((scale - _SCALE_FLOOR).clamp(min=1e-4)))

    @torch.no_grad()
    def set_affine(self, intercept: torch.Tensor, slopes: torch.Tensor | None, scale: torch.Tensor,
                   scale_slopes: torch.Tensor | None = None) -> None:
        """Set the location to ``intercept + slopes @ context[:, :k]`` and the scale to
        ``softplus(raw_scale(scale) + scale_slopes @ context[:, :k]) + floor``.

        ``slopes`` and ``scale_slopes`` have shape ``(features, k)`` and act on the first ``k``
        context columns (the parents' raw encodings); the rest of the head stays zero. With a
        one-hot parent (the site), column ``j`` of ``scale_slopes`` set to
        ``raw_scale(scale_j) - raw_scale(scale)`` gives level ``j`` the scale ``scale_j``.
        """
        raw_scale = self.raw_scale(scale)
        if self.affine_head is None:
            self.free_affine[:, 0] = intercept
            self.free_affine[:, 1] = raw_scale
            return
        self.affine_head.bias[0::2] = intercept
        self.affine_head.bias[1::2] = raw_scale
        if slopes is not None:
            self.affine_head.weight[0::2, :slopes.shape[1]] = slopes
        if scale_slopes is not None:
            self.affine_head.weight[1::2, :scale_slopes.shape[1]] = scale_slopes

    def _location_scale(self, inputs, context):
        if self.affine_head is None:
            params = self.free_affine.expand(inputs.shape[0], -1, -1)
        else:
            params = self.affine_head(context).view(inputs.shape[0], self.features, 2)
        # contiguous copies: softplus and the arithmetic on strided (every 2nd) columns are
        # several times slower on CPU, and the values are the same
        loc, raw_scale = (column.contiguous() for column in params.unbind(-1))
        return loc, F.softplus(raw_scale) + _SCALE_FLOOR

    def _table(self, context, n: int):
        """Per-bin spline table for ``n`` rows and each row's level.

        Returns ``(table, which)``: ``table`` ``(C, L, D, K)`` (see
        :func:`~.splines.bin_table`) and ``which`` ``(n,)``, or ``None`` when one level serves
        every row or there is one level per row.
        """
        if self.shape_head is None:
            params, which = self.free_shape.unsqueeze(0), None
        elif self.per_row_shape:
            params = self.shape_head(context[:, self.shape_columns]).view(n, self.features, -1)
            which = None
        else:
            # discrete shape context: one spline per distinct row of it (e.g. site x sex)
            levels, which = _distinct_rows(context[:, self.shape_columns].detach())
            if len(levels) == 1:
                which = None
            return _in_fixed_blocks(self._level_table, levels, dim=1), which
        return splines.spline_table(self.spline, params, self.num_bins, self.tail_bound), which

    def _level_table(self, levels: torch.Tensor) -> torch.Tensor:
        """Spline table ``(C, L, D, K)`` of ``L`` rows of discrete shape context."""
        params = self.shape_head(levels).view(len(levels), self.features, -1)
        return splines.spline_table(self.spline, params, self.num_bins, self.tail_bound)

    def _spline(self, values, context, inverse, logabsdet=True):
        """Spline (or inverse) of ``values`` ``(n, D)`` with the context's shapes."""
        table, which = self._table(context, values.shape[0])
        return splines.evaluate_levels(self.spline, values, table, which, inverse, self.tail_bound,
                                       logabsdet=logabsdet)

    # ---------------------------------------------------------------- directions
    def forward(self, inputs, context=None):
        if self.spline and torch.is_grad_enabled():
            # training: affine step + spline + log-derivative in one hand-differentiated kernel
            if self.affine_head is None:
                params = self.free_affine.expand(inputs.shape[0], -1, -1)
            else:
                params = self.affine_head(context).view(inputs.shape[0], self.features, 2)
            table, which = self._table(context, inputs.shape[0])
            outputs, logabsdet = splines.affine_spline_density(
                self.spline, inputs, params[..., 0], params[..., 1], table, which, self.tail_bound,
                _SCALE_FLOOR)
            return outputs, logabsdet.sum(dim=-1)
        loc, scale = self._location_scale(inputs, context)
        outputs = (inputs - loc) / scale
        logabsdet = -torch.log(scale)
        if self.spline:
            outputs, spline_lad = self._spline(outputs, context, inverse=False)
            logabsdet = logabsdet + spline_lad
        return outputs, logabsdet.sum(dim=-1)

    def inverse(self, inputs, context=None):
        loc, scale = self._location_scale(inputs, context)
        outputs, logabsdet = inputs, torch.zeros_like(inputs)
        if self.spline:
            outputs, logabsdet = self._spline(inputs, context, inverse=True)
        outputs = outputs * scale + loc
        logabsdet = logabsdet + torch.log(scale)
        return outputs, logabsdet.sum(dim=-1)

    def _affine_halves(self, context, n: int) -> torch.Tensor:
        """The affine parameters of ``n`` rows as ``(n, 2, D)``: locations, then raw scales.

        The head interleaves them (``(n, D, 2)``). Here its output columns come in halves, so
        that each half is read with unit stride within a row: on every-other-element views,
        torch's float64 ``maximum`` and ``clamp`` (in :func:`_positive_scale`) do not vectorise.
        """
        if self.affine_head is None:
            return self.free_affine.T.unsqueeze(0).expand(n, -1, -1)
        weight, bias = self._in_halves(self.affine_head.weight), self._in_halves(self.affine_head.bias)
        return torch.addmm(bias.view(-1), context, weight.T).view(n, 2, self.features)

    def _in_halves(self, rows: torch.Tensor) -> torch.Tensor:
        """The affine head's output rows (weights or biases) ordered as :meth:`_affine_halves`."""
        return rows.view(self.features, 2, -1).transpose(0, 1).reshape(2 * self.features, -1)

    def _compiled_parameters(self, n: int, context, params=None):
        """Location, positive scale (NumPy) and spline table / row levels for the kernels.

        ``params`` (:meth:`_affine_halves` of ``context``) is computed when not given.
        """
        if params is None:
            params = self._affine_halves(context, n)
        scale = _positive_scale(params[:, 1])  # the compiled loop reads the location in place
        table, which = None, None
        if self.spline:
            table, which = self._table(context, n)
            table, which = table.numpy(), None if which is None else which.numpy()
        return params[:, 0].numpy(), scale.numpy(), table, which

    @torch.no_grad()
    def map_compiled(self, values: np.ndarray, context=None, inverse: bool = False) -> np.ndarray:
        """:meth:`map` for counterfactual transport (no autograd), returned as NumPy.

        The context network, heads and softplus run vectorised in torch, the affine step and
        splines in one compiled pass per element (:func:`~.kernels.elementwise_map`).
        """
        loc, scale, table, which = self._compiled_parameters(values.shape[0], context)
        return kernels.elementwise_map(self.spline, values, loc, scale, table, which, inverse, self.tail_bound)

    @torch.no_grad()
    def transport_compiled(self, values: np.ndarray, context, new_context) -> np.ndarray:
        """``map_compiled(map_compiled(values, context), new_context, inverse=True)``.

        The affine head is linear in the context, so when an intervention changes a few of
        its columns (``do(site)`` changes the site's one-hot columns) the new location and
        scale parameters are the old ones plus those columns' change times their weights,
        rather than a second pass of the head over every column. It always takes this path: which
        columns change depends on the other rows of the chunk, and the columns left out only
        add exact zeros, so a row's numbers do not (under
        :func:`~bidsharmony.utils.rowwise_torch.fixed_order_products`).
        """
        n = values.shape[0]
        params = new_params = None
        if self.affine_head is not None:
            params = self._affine_halves(context, n)
            change = new_context - context
            changed = torch.nonzero(change.abs().amax(dim=0) > 0)[:, 0]
            weight = self._in_halves(self.affine_head.weight[:, changed])
            new_params = torch.addmm(params.view(n, -1), change[:, changed], weight.T).view_as(params)
        noise = kernels.elementwise_map(self.spline, values, *self._compiled_parameters(n, context, params),
                                        inverse=False, bound=self.tail_bound)
        return kernels.elementwise_map(self.spline, noise, *self._compiled_parameters(n, new_context, new_params),
                                       inverse=True, bound=self.tail_bound)

    def map(self, inputs, context=None, inverse: bool = False):
        """``forward`` or ``inverse`` values without the log-determinant (counterfactuals).

        The same outputs as the two directions above up to the last bit inside the spline
        interval; it skips the logarithms, which dominate the cost of a transform.
        """
        loc, scale = self._location_scale(inputs, context)
        if not inverse:
            outputs = (inputs - loc) / scale
            if self.spline:
                outputs, _ = self._spline(outputs, context, inverse=False, logabsdet=False)
            return outputs
        outputs = inputs
        if self.spline:
            outputs, _ = self._spline(inputs, context, inverse=True, logabsdet=False)
        return outputs * scale + loc


class CholeskyCorrelation(Transform):
    """Unconditional linear map ``u = L eps`` with ``L`` lower-triangular, positive diagonal.

    With ``eps ~ N(0, I)`` the element-wise-normalised features ``u`` get the covariance
    ``L L^T`` — any correlation structure (a Gaussian copula). Data -> noise solves the
    triangular system. Starts at the identity. (Written here rather than using nflows'
    ``LULinear``, whose inverse relies on the deprecated ``torch.triangular_solve``.)

    Parameters
    ----------
    features : int
    """

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        rows, cols = torch.tril_indices(features, features, offset=-1)
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)
        self.off_diagonal = nn.Parameter(torch.zeros(len(rows)))
        self.log_diagonal = nn.Parameter(torch.zeros(features))

    def matrix(self) -> torch.Tensor:
        # one scatter of [diagonal, off-diagonal] into the flattened matrix: the same numbers
        # as diag() + index_put(), and its backward is a gather (index_put's is ~5x slower)
        n = self.features
        positions = torch.cat([torch.arange(n) * (n + 1), self.rows * n + self.cols])
        entries = torch.cat([torch.exp(self.log_diagonal), self.off_diagonal])
        return entries.new_zeros(n * n).scatter(0, positions, entries).view(n, n)

    def forward(self, inputs, context=None):
        noise = torch.linalg.solve_triangular(self.matrix(), inputs.T, upper=False).T
        return noise, (-self.log_diagonal.sum()).expand(inputs.shape[0])

    def inverse(self, inputs, context=None):
        return inputs @ self.matrix().T, self.log_diagonal.sum().expand(inputs.shape[0])


class MaskedLinearRationalAutoregressiveTransform(AutoregressiveTransform):
    """Masked autoregressive linear-rational spline (nflows has only the rational-quadratic one).

    Parameters
    ----------
    features, hidden_features, context_features, num_blocks
        As for nflows' ``MaskedPiecewiseRationalQuadraticAutoregressiveTransform``.
    num_bins : int
    tail_bound : float
    """

    def __init__(self, features: int, hidden_features: int, context_features: int | None = None,
                 num_bins: int = 8, tail_bound: float = 4.0, num_blocks: int = 2):
        self.features = features
        self.num_bins = num_bins
        self.tail_bound = float(tail_bound)
        made = made_module.MADE(features=features, hidden_features=hidden_features,
                                context_features=context_features, num_blocks=num_blocks,
                                output_multiplier=self._output_dim_multiplier(),
                                use_residual_blocks=True, random_mask=False, activation=F.relu)
        super().__init__(made)

    def _output_dim_multiplier(self):
        return splines.parameters_per_element("linear-rational", self.num_bins)

    def _elementwise(self, inputs, autoregressive_params, inverse):
        params = autoregressive_params.view(inputs.shape[0], self.features, self._output_dim_multiplier())
        outputs, logabsdet = splines.apply_spline("linear-rational", inputs, params, self.num_bins,
                                                  inverse=inverse, bound=self.tail_bound)
        return outputs, logabsdet.sum(dim=-1)

    def _elementwise_forward(self, inputs, autoregressive_params):
        return self._elementwise(inputs, autoregressive_params, inverse=False)

    def _elementwise_inverse(self, inputs, autoregressive_params):
        return self._elementwise(inputs, autoregressive_params, inverse=True)


def _autoregressive_layer(flow: str, features: int, hidden: int, context: int, num_bins: int,
                          tail_bound: float) -> Transform:
    from nflows.transforms.autoregressive import (
        MaskedAffineAutoregressiveTransform,
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    )

    if flow == "affine":
        return MaskedAffineAutoregressiveTransform(features=features, hidden_features=hidden,
                                                   context_features=context, num_blocks=2)
    if flow == "quadratic-spline":
        return MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            features=features, hidden_features=hidden, context_features=context, num_bins=num_bins,
            tails="linear", tail_bound=tail_bound, num_blocks=2,
            min_bin_width=splines.MIN_BIN_WIDTH, min_bin_height=splines.MIN_BIN_HEIGHT,
            min_derivative=splines.MIN_DERIVATIVE)
    return MaskedLinearRationalAutoregressiveTransform(features=features, hidden_features=hidden,
                                                       context_features=context, num_bins=num_bins,
                                                       tail_bound=tail_bound)


def build_feature_flow(features: int, context_features: int | None, *, flow: str = "quadratic-spline",
                       architecture: str = "elementwise", num_layers: int = 1,
                       hidden_features: int = 64, num_bins: int = 8, tail_bound: float = 4.0,
                       correlated: bool = True, shape_columns=None) -> CompositeTransform:
    """Assemble the data -> noise transform of a (vector) mechanism.

    Parameters
    ----------
    features : int
        Dimension of the variable.
    context_features : int or None
        Width of the context embedding (``None``: unconditional).
    flow : {"affine", "linear-spline", "quadratic-spline"}
    architecture : {"elementwise", "autoregressive"}
        See the module docstring.
    num_layers : int
        Element-wise: number of stacked conditional element-wise layers; autoregressive: number
        of masked autoregressive layers.
    hidden_features : int
        MADE width (autoregressive only).
    num_bins, tail_bound
        Spline settings.
    correlated : bool
        Element-wise only: append the unconditional :class:`CholeskyCorrelation` layer (ignored for a
        single feature).
    shape_columns : list of int, optional
        Element-wise only: context columns the spline shapes depend on (``None``: all); see
        :class:`ConditionalElementwiseTransform`.

    Returns
    -------
    nflows.transforms.CompositeTransform
    """
    if flow not in FLOWS:
        raise ValueError(f"flow must be one of {FLOWS}, got {flow!r}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    layers: list = []
    if architecture == "elementwise":
        for _ in range(num_layers):
            layers.append(ConditionalElementwiseTransform(features, context_features, flow, num_bins,
                                                          tail_bound, shape_columns))
        if correlated and features > 1:
            layers.append(CholeskyCorrelation(features))
    else:
        # location/scale per context first, so that the autoregressive splines see data of
        # roughly unit scale for every site and age (their tails are the identity)
        layers.append(ConditionalElementwiseTransform(features, context_features, "affine"))
        for index in range(num_layers):
            layers.append(_autoregressive_layer(flow, features, hidden_features, context_features,
                                                num_bins, tail_bound))
            if index < num_layers - 1 and features > 1:
                layers.append(ReversePermutation(features))
    return CompositeTransform(layers)


#: layers that never read the context (they cancel between abduction and prediction)
UNCONDITIONAL_LAYERS = (CholeskyCorrelation,)


def transform_is_sequential(transform: Transform) -> bool:
    """True when inverting ``transform`` needs one pass per feature (autoregressive layers)."""
    return any(isinstance(module, AutoregressiveTransform) for module in transform.modules())


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(np.prod(p.shape) for p in module.parameters() if p.requires_grad))
