"""Monotone element-wise splines: linear-rational and rational-quadratic, with identity tails.

The flow-SCM paper (Wang et al. 2021) compares an affine flow with "linear" and "quadratic"
neural spline flows, citing Dolatabadi et al. (2020) and Durkan et al. (2019):

* **linear-rational spline** (Dolatabadi, Erfani & Leckie, AISTATS 2020): in every bin the map
  is made of two linear-rational (Möbius) pieces that meet at a point set by a learned
  ``lambda``; values and derivatives at the knots are matched and the derivative is continuous.
  nflows does not provide it;
* **rational-quadratic spline** (Durkan, Bekasov, Murray & Papamakarios, NeurIPS 2019), Eqs. 4-8
  of that paper (nflows has one too; it is used for the masked autoregressive variant).

Both live on ``[-B, B]`` with identity ("linear") tails outside, so any real input is valid —
unlike nflows' piecewise-linear/quadratic CDF splines (Müller et al.), which raise
``InputOutsideDomain`` outside ``[0, 1]``. Both directions are closed-form per element.

The work is split in two so that many rows can share one spline without copying its
parameters: :func:`spline_knots` turns unconstrained parameters into knot tables, and
:func:`evaluate_spline` evaluates inputs ``(..., D)`` against tables whose leading dimensions
broadcast (one table per row, or one for a whole group of rows).

Parameter layout per element (last axis), with ``K`` bins::

    widths (K) | heights (K) | derivatives at the K-1 inner knots | [lambdas (K), linear only]

The boundary derivatives are 1 so the spline joins the identity tails smoothly.

Linear-rational bin (``phi = (x - x_k) / w_k`` in ``[0, 1]``, outputs ``y_a``..``y_b``, end
derivatives ``d_a``, ``d_b``, ``s = (y_b - y_a) / w_k``): with weights ``w_a = 1``,
``w_b = sqrt(d_a / d_b)``, the joint ``y_m = ((1 - lam) w_a y_a + lam w_b y_b) / ((1 - lam) w_a
+ lam w_b)`` and ``w_m = (lam w_a d_a + (1 - lam) w_b d_b) / s``::

    phi <= lam:  y = (w_a y_a (lam - phi) + w_m y_m phi) / (w_a (lam - phi) + w_m phi)
    phi >  lam:  y = (w_m y_m (1 - phi) + w_b y_b (phi - lam)) / (w_m (1 - phi) + w_b (phi - lam))

Each piece is monotone (all weights > 0); the derivative is ``d_a`` at ``phi = 0``, ``d_b`` at
``phi = 1`` and continuous at ``phi = lam`` (the ratio ``w_b / w_a`` is what makes both ends
agree); each piece inverts in closed form.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch
from torch.nn import functional as F

from . import density_kernels

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3
MIN_LAMBDA = 0.025

#: the flows' public names -> the spline they use
SPLINE_OF_FLOW = {"linear-spline": "linear-rational", "quadratic-spline": "rational-quadratic"}
KINDS = ("linear-rational", "rational-quadratic")


def parameters_per_element(kind: str, num_bins: int) -> int:
    """Number of unconstrained parameters of one element's spline (identity tails)."""
    if kind == "rational-quadratic":
        return 3 * num_bins - 1
    if kind == "linear-rational":
        return 4 * num_bins - 1
    raise ValueError(f"unknown spline kind {kind!r}")


def identity_parameters(kind: str, num_bins: int) -> torch.Tensor:
    """Unconstrained parameters that make the spline exactly the identity on ``[-B, B]``.

    Equal widths and heights with unit derivatives (both splines then reduce to ``y = x``).
    """
    params = torch.zeros(parameters_per_element(kind, num_bins), dtype=torch.float64)
    unit = math.log(math.expm1(1.0 - MIN_DERIVATIVE))  # softplus^-1(1 - min_derivative)
    params[2 * num_bins: 3 * num_bins - 1] = unit
    return params


def _softmax(values: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis, written out.

    ``F.softmax`` over a short last axis (the 6-10 bins) is ~4x slower on CPU than these three
    vectorised operations, and knot tables are recomputed at every training step. The result
    equals ``F.softmax`` to ~1e-16.
    """
    exponentials = torch.exp(values - values.amax(dim=-1, keepdim=True))
    return exponentials / exponentials.sum(dim=-1, keepdim=True)


def _edges(unnormalized: torch.Tensor, minimum: float, bound: float) -> torch.Tensor:
    """Softmax bin sizes (each >= ``minimum`` of the range) -> knot positions on [-B, B]."""
    num_bins = unnormalized.shape[-1]
    sizes = minimum + (1 - minimum * num_bins) * _softmax(unnormalized)
    inner = torch.cumsum(sizes, dim=-1)[..., :-1] * (2 * bound) - bound
    low = torch.full_like(sizes[..., :1], -bound)
    return torch.cat([low, inner, -low], dim=-1)


def spline_knots(kind: str, params: torch.Tensor, num_bins: int, bound: float) -> dict:
    """Knot tables of a spline from its unconstrained parameters.

    Parameters
    ----------
    kind : {"linear-rational", "rational-quadratic"}
    params : torch.Tensor
        ``(..., parameters_per_element(kind, num_bins))``.
    num_bins : int
    bound : float

    Returns
    -------
    dict
        ``x``, ``y`` (knot positions, ``(..., K + 1)``), ``d`` (derivatives at the knots,
        ``(..., K + 1)``) and, for the linear-rational spline, ``lam`` (``(..., K)``).
    """
    widths = params[..., :num_bins]
    # contiguous: softplus on a strided slice is ~3x slower on CPU
    inner_derivatives = params[..., 2 * num_bins:3 * num_bins - 1].contiguous()
    ones = torch.ones_like(widths[..., :1])
    knots = {
        "x": _edges(widths, MIN_BIN_WIDTH, bound),
        "y": _edges(params[..., num_bins:2 * num_bins], MIN_BIN_HEIGHT, bound),
        "d": torch.cat([ones, MIN_DERIVATIVE + F.softplus(inner_derivatives), ones], dim=-1),
    }
    if kind == "linear-rational":
        lambdas = params[..., 3 * num_bins - 1:4 * num_bins - 1]
        knots["lam"] = MIN_LAMBDA + (1 - 2 * MIN_LAMBDA) * torch.sigmoid(lambdas)
    elif kind != "rational-quadratic":
        raise ValueError(f"unknown spline kind {kind!r}")
    return knots


def _bins(knots: dict, values: torch.Tensor, inverse: bool):
    """Per-element bin quantities ``(x_a, width, y_a, height, d_a, d_b[, lam])``."""
    edges = knots["y"] if inverse else knots["x"]
    index = torch.sum(values[..., None] >= edges[..., 1:-1], dim=-1, keepdim=True)
    shape = index.shape[:-1]

    def pick(table, offset=0):
        table = table[..., offset:] if offset else table
        return table.expand(*shape, table.shape[-1]).gather(-1, index)[..., 0]

    x_a, y_a = pick(knots["x"]), pick(knots["y"])
    width, height = pick(knots["x"], 1) - x_a, pick(knots["y"], 1) - y_a
    d_a, d_b = pick(knots["d"]), pick(knots["d"], 1)
    lam = pick(knots["lam"]) if "lam" in knots else None
    return x_a, width, y_a, height, d_a, d_b, lam


#: the array operations the spline formulas need, for torch tensors (autograd) and for NumPy
#: arrays (values without gradients: NumPy's float64 log, sqrt and scalar arithmetic are 2-4x
#: faster on CPU than torch's, and there is no autograd to feed)
TORCH_OPS = SimpleNamespace(sqrt=torch.sqrt, log=torch.log, where=torch.where, minimum=torch.minimum,
                            maximum=torch.maximum, clip=torch.clamp)
def _clip_numpy(values, low=None, high=None):
    """``np.clip`` without its overhead (~4x slower than the two ufuncs on float64)."""
    if low is not None:
        values = np.maximum(values, low)
    if high is not None:
        values = np.minimum(values, high)
    return values


NUMPY_OPS = SimpleNamespace(sqrt=np.sqrt, log=np.log, where=np.where, minimum=np.minimum,
                            maximum=np.maximum, clip=_clip_numpy)


def _linear_rational(values, x_a, width, y_a, height, d_a, d_b, lam, inverse, logabsdet=True,
                     xp=TORCH_OPS):
    y_b = y_a + height
    slope = height / width
    w_b = xp.sqrt(d_a / d_b)  # w_a = 1
    w_m = (lam * d_a + (1 - lam) * w_b * d_b) / slope
    y_m = ((1 - lam) * y_a + lam * w_b * y_b) / ((1 - lam) + lam * w_b)
    # Each piece is evaluated only on its own side of the joint (phi_l <= lam <= phi_r), so the
    # branch where() discards never divides by zero — a NaN there would poison gradients.
    if inverse:
        left = values <= y_m
        y_l, y_r = xp.minimum(values, y_m), xp.maximum(values, y_m)
        phi_l = lam * (y_l - y_a) / ((y_l - y_a) + w_m * (y_m - y_l))
        phi_r = (w_m * (y_r - y_m) + lam * w_b * (y_b - y_r)) / (w_m * (y_r - y_m) + w_b * (y_b - y_r))
        phi_l, phi_r = xp.minimum(phi_l, lam), xp.clip(xp.maximum(phi_r, lam), None, 1.0)
        outputs = x_a + xp.where(left, phi_l, phi_r) * width
    else:
        phi = xp.clip((values - x_a) / width, 0.0, 1.0)
        left = phi <= lam
        phi_l, phi_r = xp.minimum(phi, lam), xp.maximum(phi, lam)
        y_left = (y_a * (lam - phi_l) + w_m * y_m * phi_l) / ((lam - phi_l) + w_m * phi_l)
        y_right = (w_m * y_m * (1 - phi_r) + w_b * y_b * (phi_r - lam)) / (w_m * (1 - phi_r) + w_b * (phi_r - lam))
        outputs = xp.where(left, y_left, y_right)
    if not logabsdet:
        return outputs, None
    denom_left = (lam - phi_l) + w_m * phi_l
    denom_right = w_m * (1 - phi_r) + w_b * (phi_r - lam)
    grad_left = lam * w_m * (y_m - y_a) / denom_left ** 2
    grad_right = (1 - lam) * w_b * w_m * (y_b - y_m) / denom_right ** 2
    log_grad = xp.log(xp.where(left, grad_left, grad_right)) - xp.log(width)
    return outputs, log_grad


def _rational_quadratic(values, x_a, width, y_a, height, d_a, d_b, inverse, logabsdet=True,
                        xp=TORCH_OPS):
    slope = height / width
    curvature = d_a + d_b - 2 * slope
    if inverse:
        # solve a xi^2 + b xi + c = 0 for xi in [0, 1] (Durkan et al. 2019, Eqs. 6-8)
        offset = values - y_a
        a = height * (slope - d_a) + offset * curvature
        b = height * d_a - offset * curvature
        c = -slope * offset
        discriminant = xp.clip(b * b - 4 * a * c, 0.0, None)
        xi = xp.clip((2 * c) / (-b - xp.sqrt(discriminant)), 0.0, 1.0)
        outputs = x_a + xi * width
    else:
        xi = xp.clip((values - x_a) / width, 0.0, 1.0)
        both = xi * (1 - xi)
        outputs = y_a + height * (slope * xi * xi + d_a * both) / (slope + curvature * both)
    if not logabsdet:
        return outputs, None
    both = xi * (1 - xi)
    numerator = slope * slope * (d_b * xi * xi + 2 * slope * both + d_a * (1 - xi) ** 2)
    log_grad = xp.log(numerator) - 2 * xp.log(slope + curvature * both)
    return outputs, log_grad


def _numpy(*tensors):
    """NumPy views of (detached, CPU) tensors — no copies."""
    return [t.detach().numpy() for t in tensors]


class _AffineSplineDensity(torch.autograd.Function):
    """``u = (x - loc) / (softplus(raw_scale) + floor)`` then a spline, with the total
    log-derivative per element, compiled and differentiated by hand
    (:mod:`.density_kernels`).

    The first layer of an element-wise flow in training: one loop per element each way
    replaces ~25 NumPy passes, a gather and a scatter-add, which dominate at a batch of 64.
    ``apply(kind, bound, floor, inputs, loc, raw_scale, table, which)``.
    """

    @staticmethod
    def forward(ctx, kind, bound, floor, inputs, loc, raw_scale, table, which):
        values, loc, raw_scale, table = _numpy(inputs, loc, raw_scale, table)
        outputs, logdet, saved = density_kernels.affine_spline_density(
            kind, values, loc, raw_scale, table, None if which is None else which.numpy(), bound, floor)
        ctx.arguments = (kind, table, saved)
        return torch.from_numpy(outputs), torch.from_numpy(logdet)

    @staticmethod
    def backward(ctx, grad_outputs, grad_logdet):
        grads = density_kernels.affine_spline_density_backward(*ctx.arguments,
                                                               *_numpy(grad_outputs, grad_logdet))
        return (None, None, None, *(torch.from_numpy(g) for g in grads), None)


def evaluate_spline(kind: str, inputs: torch.Tensor, knots: dict, inverse: bool = False,
                    bound: float = 3.0):
    """Evaluate a spline (or its inverse) with identity tails outside ``[-bound, bound]``.

    Parameters
    ----------
    kind : {"linear-rational", "rational-quadratic"}
    inputs : torch.Tensor
        Shape ``S``.
    knots : dict
        From :func:`spline_knots`; leading dimensions broadcast against ``S``.
    inverse : bool
    bound : float

    Returns
    -------
    outputs, logabsdet : torch.Tensor
        Element-wise, shape ``S``; ``logabsdet`` is ``log |d outputs / d inputs|``.
    """
    inside = (inputs >= -bound) & (inputs <= bound)
    clamped = inputs.clamp(-bound, bound)
    x_a, width, y_a, height, d_a, d_b, lam = _bins(knots, clamped, inverse)
    if kind == "linear-rational":
        outputs, log_grad = _linear_rational(clamped, x_a, width, y_a, height, d_a, d_b, lam, inverse)
    elif kind == "rational-quadratic":
        outputs, log_grad = _rational_quadratic(clamped, x_a, width, y_a, height, d_a, d_b, inverse)
    else:
        raise ValueError(f"unknown spline kind {kind!r}")
    logabsdet = -log_grad if inverse else log_grad
    outputs = torch.where(inside, outputs, inputs)
    logabsdet = torch.where(inside, logabsdet, torch.zeros_like(logabsdet))
    return outputs, logabsdet


def apply_spline(kind: str, inputs: torch.Tensor, params: torch.Tensor, num_bins: int,
                 inverse: bool = False, bound: float = 3.0):
    """Evaluate an element-wise spline whose parameters are stacked on the last axis.

    Parameters
    ----------
    kind : {"linear-rational", "rational-quadratic"}
    inputs : torch.Tensor
        Shape ``S``.
    params : torch.Tensor
        Shape ``S + (parameters_per_element(kind, num_bins),)`` (or broadcastable to it).
    num_bins : int
    inverse : bool
    bound : float

    Returns
    -------
    outputs, logabsdet : torch.Tensor
        Element-wise, shape ``S``.
    """
    return evaluate_spline(kind, inputs, spline_knots(kind, params, num_bins, bound), inverse, bound)


# ------------------------------------------------------------------ splines shared by many rows
#: above this many rows the bins are searched level by level against broadcast edges, which
#: never materialises an (n, D, K - 1) table of per-row edges (transform-sized inputs)
GROUPED_SEARCH_ROWS = 512


def bin_table(kind: str, knots: dict) -> torch.Tensor:
    """Per-bin quantities of knot tables, stacked on a new leading axis.

    Parameters
    ----------
    kind : {"linear-rational", "rational-quadratic"}
    knots : dict
        From :func:`spline_knots`, tables of shape ``(..., K + 1)``.

    Returns
    -------
    torch.Tensor
        ``(C, ..., K)``: left knot ``x_a``, bin width, ``y_a``, bin height, derivatives at
        both ends (``C = 6``) and, for the linear-rational spline, ``lambda`` (``C = 7``). The
        differences are the ones :func:`evaluate_spline` takes, so both agree bit for bit.
        The inner knots are ``table[0, ..., 1:]`` (x) and ``table[2, ..., 1:]`` (y).
    """
    x, y, d = knots["x"], knots["y"], knots["d"]
    columns = [x[..., :-1], x[..., 1:] - x[..., :-1], y[..., :-1], y[..., 1:] - y[..., :-1],
               d[..., :-1], d[..., 1:]]
    if kind == "linear-rational":
        columns.append(knots["lam"])
    return torch.stack(columns, dim=0)


class _SplineTable(torch.autograd.Function):
    """``bin_table(spline_knots(params))`` with a hand-written backward pass.

    The softmaxes, softplus and sigmoid run in torch; the knots, the table and the whole
    backward pass run compiled (:func:`.density_kernels.assemble_table`), which gives the
    same table to the last bit in a handful of operations instead of ~40 (and ~30 in the
    backward pass) — at a batch of 64 rows their bookkeeping costs more than the arithmetic.
    """

    @staticmethod
    def forward(ctx, params, kind, num_bins, bound):
        flat = params.detach().reshape(-1, params.shape[-1])
        softmax = _softmax(flat[:, :2 * num_bins].unflatten(1, (2, num_bins)))
        inner = flat[:, 2 * num_bins:3 * num_bins - 1].contiguous()
        lambdas = lambda_slopes = None
        if kind == "linear-rational":
            sigmoid = torch.sigmoid(flat[:, 3 * num_bins - 1:4 * num_bins - 1])
            lambdas = (MIN_LAMBDA + (1 - 2 * MIN_LAMBDA) * sigmoid).numpy()
            lambda_slopes = ((1 - 2 * MIN_LAMBDA) * sigmoid * (1 - sigmoid)).numpy()
        table = density_kernels.assemble_table(softmax.numpy(), (MIN_DERIVATIVE + F.softplus(inner)).numpy(),
                                               lambdas, bound, (MIN_BIN_WIDTH, MIN_BIN_HEIGHT))
        ctx.saved = (params.shape, softmax.numpy(), torch.sigmoid(inner).numpy(), lambda_slopes, bound)
        return torch.from_numpy(table).view(table.shape[0], *params.shape[:-1], num_bins)

    @staticmethod
    def backward(ctx, grad_table):
        shape, softmax, derivative_slopes, lambda_slopes, bound = ctx.saved
        grad = density_kernels.table_backward(softmax, derivative_slopes, lambda_slopes, bound,
                                              (MIN_BIN_WIDTH, MIN_BIN_HEIGHT),
                                              grad_table.reshape(grad_table.shape[0], -1, softmax.shape[-1]).numpy())
        return torch.from_numpy(grad).view(shape), None, None, None


def spline_table(kind: str, params: torch.Tensor, num_bins: int, bound: float) -> torch.Tensor:
    """Per-bin table (see :func:`bin_table`) straight from unconstrained spline parameters.

    Parameters
    ----------
    kind : {"linear-rational", "rational-quadratic"}
    params : torch.Tensor
        ``(..., parameters_per_element(kind, num_bins))``.
    num_bins : int
    bound : float

    Returns
    -------
    torch.Tensor
        ``(C, ..., K)``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown spline kind {kind!r}")
    if torch.is_grad_enabled() and params.requires_grad:
        return _SplineTable.apply(params, kind, num_bins, bound)
    return bin_table(kind, spline_knots(kind, params, num_bins, bound))


def _count_edges_below(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """``sum_k (values >= edges[:, k])`` for ``values (m, D)`` and one edge table ``(D, K - 1)``.

    One broadcast comparison per inner edge, accumulated in uint8 (K <= 255): about 4x faster
    than comparing against an ``(m, D, K - 1)`` expansion and summing its last axis.
    """
    columns = edges.T.contiguous()
    count = torch.ge(values, columns[0]).view(torch.uint8)
    for column in columns[1:]:
        count = count + torch.ge(values, column).view(torch.uint8)
    return count.long()


def _search_bins(values: torch.Tensor, edges: torch.Tensor, which) -> torch.Tensor:
    """Bin of every element: the number of inner edges of its row's level at or below it.

    Parameters
    ----------
    values : torch.Tensor
        ``(n, D)``, already clamped to the spline's interval.
    edges : torch.Tensor
        Inner knots ``(L, D, K - 1)``.
    which : torch.Tensor or None
        Level of every row; ``None`` when ``L == 1`` (shared) or ``L == n`` (one per row).
    """
    n, levels = values.shape[0], edges.shape[0]
    if which is None:
        if levels == 1:
            return _count_edges_below(values, edges[0])
        return torch.sum(values[..., None] >= edges, dim=-1)
    if n <= GROUPED_SEARCH_ROWS:
        # (K - 1, n, D) comparisons summed over the leading axis (faster than the last)
        return torch.ge(values, edges.movedim(-1, 0).contiguous()[:, which]).sum(dim=0)
    bins = torch.empty(values.shape, dtype=torch.long)
    for level in range(levels):
        rows = torch.nonzero(which == level)[:, 0]
        if len(rows):
            bins[rows] = _count_edges_below(values[rows], edges[level])
    return bins


def evaluate_levels(kind: str, inputs: torch.Tensor, table: torch.Tensor, which=None,
                    inverse: bool = False, bound: float = 3.0, logabsdet: bool = True):
    """Evaluate element-wise splines shared by groups of rows, with identity tails.

    The same numbers as :func:`evaluate_spline` with the knot tables indexed per row
    (``knots[which]``), but without copying tables per row: every element's bin is looked up
    in the flattened ``(L, D, K)`` table with one gather. With gradients the formulas run in
    torch under autograd (training uses :func:`affine_spline_density` instead); without
    gradients everything runs in NumPy (:func:`evaluate_levels_numpy`).

    Parameters
    ----------
    kind : {"linear-rational", "rational-quadratic"}
    inputs : torch.Tensor
        ``(n, D)``.
    table : torch.Tensor
        ``(C, L, D, K)`` from :func:`spline_table` (or :func:`bin_table`).
    which : torch.Tensor, optional
        ``(n,)`` level of each row. ``None``: ``L == 1`` (one spline per feature for every
        row) or ``L == n`` (row ``i`` uses level ``i``).
    inverse : bool
    bound : float
    logabsdet : bool
        Also return ``log |d outputs / d inputs|``; ``False`` skips it (counterfactual
        transport needs values only) and returns ``None`` in its place.

    Returns
    -------
    outputs : torch.Tensor
        ``(n, D)``.
    logabsdet : torch.Tensor or None
        ``(n, D)``.
    """
    n, features = inputs.shape
    columns, levels, num_bins = table.shape[0], table.shape[1], table.shape[-1]
    if which is None and levels not in (1, n):
        raise ValueError(f"{levels} spline levels for {n} rows: pass the level of every row")
    if not (torch.is_grad_enabled() and (inputs.requires_grad or table.requires_grad)):
        outputs, log_grad = evaluate_levels_numpy(
            kind, inputs.detach().numpy(), table.detach().numpy(), None if which is None else which.numpy(),
            inverse, bound, logabsdet)
        return torch.from_numpy(outputs), None if log_grad is None else torch.from_numpy(log_grad)
    clamped = inputs.clamp(-bound, bound)
    with torch.no_grad():
        edges = table[2 if inverse else 0, ..., 1:]  # inner knots (y or x)
        index = _search_bins(clamped.detach(), edges.detach(), which)
        # flat position of every element's bin in the (L, D, K) table
        index = index + torch.arange(features) * num_bins
        if which is not None:
            index = index + (which * (features * num_bins))[:, None]
        elif levels > 1:
            index = index + (torch.arange(n) * (features * num_bins))[:, None]
    # one gather (and one compact scatter-add in backward) for all quantities
    picked = table.reshape(columns, -1).index_select(1, index.reshape(-1)).view(columns, n, features)
    # gradients by autograd in torch (training has its own compiled kernel: affine_spline_density)
    formula = _linear_rational if kind == "linear-rational" else _rational_quadratic
    outputs, log_grad = formula(clamped, *picked, inverse, logabsdet=logabsdet)
    inside = (inputs >= -bound) & (inputs <= bound)
    outputs = torch.where(inside, outputs, inputs)
    if not logabsdet:
        return outputs, None
    log_grad = -log_grad if inverse else log_grad
    return outputs, torch.where(inside, log_grad, torch.zeros_like(log_grad))


def affine_spline_density(kind: str, inputs: torch.Tensor, loc: torch.Tensor, raw_scale: torch.Tensor,
                          table: torch.Tensor, which=None, bound: float = 3.0, floor: float = 1e-3):
    """``u = (x - loc) / (softplus(raw_scale) + floor)`` then the spline, with gradients.

    The training path of an element-wise flow layer: the affine step, the spline and the
    log-derivative ``log|du/dx| + log|spline'(u)|`` (per element) in one compiled,
    hand-differentiated kernel (see :class:`_AffineSplineDensity`).

    Parameters
    ----------
    kind : {"linear-rational", "rational-quadratic"}
    inputs, loc, raw_scale : torch.Tensor
        ``(n, D)``.
    table : torch.Tensor
        ``(C, L, D, K)`` from :func:`spline_table`.
    which : torch.Tensor, optional
        ``(n,)`` level of each row; ``None`` when ``L == 1`` or ``L == n``.
    bound, floor : float

    Returns
    -------
    outputs, logabsdet : torch.Tensor
        ``(n, D)`` each.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown spline kind {kind!r}")
    n, levels = inputs.shape[0], table.shape[1]
    if which is None and levels not in (1, n):
        raise ValueError(f"{levels} spline levels for {n} rows: pass the level of every row")
    return _AffineSplineDensity.apply(kind, float(bound), float(floor), inputs, loc, raw_scale, table, which)


def _count_below_numpy(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """:func:`_count_edges_below` in NumPy: ``values (m, D)``, ``edges (D, K - 1)``."""
    count = np.zeros(values.shape, dtype=np.uint8)
    for column in np.ascontiguousarray(edges.T):
        count += values >= column
    return count


def evaluate_levels_numpy(kind: str, values: np.ndarray, table: np.ndarray, which=None,
                          inverse: bool = False, bound: float = 3.0, logabsdet: bool = True):
    """:func:`evaluate_levels` on NumPy arrays, values only (no gradients).

    Used for transforms and likelihood evaluation: NumPy's float64 ``log``/``sqrt``, its
    gathers and its comparisons are 2-4x faster on CPU than torch's, and nothing needs
    autograd. Bins are searched level by level against broadcast knots.
    """
    n, features = values.shape
    columns, levels, num_bins = table.shape[0], table.shape[1], table.shape[-1]
    clamped = np.minimum(np.maximum(values, -bound), bound)
    edges = table[2 if inverse else 0, ..., 1:]
    if which is None and levels == n and n > 1:
        bins = np.sum(clamped[..., None] >= edges, axis=-1)  # one table per row
        which = np.arange(n)
    elif which is None:
        bins = _count_below_numpy(clamped, edges[0])
    else:
        bins = np.empty(values.shape, dtype=np.uint8)
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(levels + 1))
        for level in range(levels):
            rows = order[bounds[level]:bounds[level + 1]]
            if len(rows):
                bins[rows] = _count_below_numpy(clamped[rows], edges[level])
    index = bins + np.arange(features) * num_bins
    if which is not None:
        index = index + (np.asarray(which) * (features * num_bins))[:, None]
    # (L * D * K, C) rows gathered at once: (n, D, C)
    rows_table = np.ascontiguousarray(table.reshape(columns, -1).T)
    picked = np.take(rows_table, index, axis=0)
    formula = _linear_rational if kind == "linear-rational" else _rational_quadratic
    outputs, log_grad = formula(clamped, *np.moveaxis(picked, -1, 0), inverse, logabsdet=logabsdet,
                                xp=NUMPY_OPS)
    if not logabsdet:
        # identity tails: the spline maps the bound onto itself, so adding back what the clamp
        # cut off gives the input outside (cheaper than a where() over every element)
        return outputs + (values - clamped), None
    inside = (values >= -bound) & (values <= bound)
    log_grad = -log_grad if inverse else log_grad
    return np.where(inside, outputs, values), np.where(inside, log_grad, 0.0)
