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

import torch
from torch.nn import functional as F

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


def _edges(unnormalized: torch.Tensor, minimum: float, bound: float) -> torch.Tensor:
    """Softmax bin sizes (each >= ``minimum`` of the range) -> knot positions on [-B, B]."""
    num_bins = unnormalized.shape[-1]
    sizes = minimum + (1 - minimum * num_bins) * F.softmax(unnormalized, dim=-1)
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
    heights = params[..., num_bins:2 * num_bins]
    inner_derivatives = params[..., 2 * num_bins:3 * num_bins - 1]
    ones = torch.ones_like(widths[..., :1])
    knots = {
        "x": _edges(widths, MIN_BIN_WIDTH, bound),
        "y": _edges(heights, MIN_BIN_HEIGHT, bound),
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


def _linear_rational(values, x_a, width, y_a, height, d_a, d_b, lam, inverse):
    y_b = y_a + height
    slope = height / width
    w_b = torch.sqrt(d_a / d_b)  # w_a = 1
    w_m = (lam * d_a + (1 - lam) * w_b * d_b) / slope
    y_m = ((1 - lam) * y_a + lam * w_b * y_b) / ((1 - lam) + lam * w_b)
    # Each piece is evaluated only on its own side of the joint (phi_l <= lam <= phi_r), so the
    # branch torch.where discards never divides by zero — a NaN there would poison gradients.
    if inverse:
        left = values <= y_m
        y_l, y_r = torch.minimum(values, y_m), torch.maximum(values, y_m)
        phi_l = lam * (y_l - y_a) / ((y_l - y_a) + w_m * (y_m - y_l))
        phi_r = (w_m * (y_r - y_m) + lam * w_b * (y_b - y_r)) / (w_m * (y_r - y_m) + w_b * (y_b - y_r))
        phi_l, phi_r = torch.minimum(phi_l, lam), torch.maximum(phi_r, lam).clamp(max=1.0)
        outputs = x_a + torch.where(left, phi_l, phi_r) * width
    else:
        phi = ((values - x_a) / width).clamp(0.0, 1.0)
        left = phi <= lam
        phi_l, phi_r = torch.minimum(phi, lam), torch.maximum(phi, lam)
        y_left = (y_a * (lam - phi_l) + w_m * y_m * phi_l) / ((lam - phi_l) + w_m * phi_l)
        y_right = (w_m * y_m * (1 - phi_r) + w_b * y_b * (phi_r - lam)) / (w_m * (1 - phi_r) + w_b * (phi_r - lam))
        outputs = torch.where(left, y_left, y_right)
    denom_left = (lam - phi_l) + w_m * phi_l
    denom_right = w_m * (1 - phi_r) + w_b * (phi_r - lam)
    grad_left = lam * w_m * (y_m - y_a) / denom_left ** 2
    grad_right = (1 - lam) * w_b * w_m * (y_b - y_m) / denom_right ** 2
    log_grad = torch.log(torch.where(left, grad_left, grad_right)) - torch.log(width)
    return outputs, log_grad


def _rational_quadratic(values, x_a, width, y_a, height, d_a, d_b, inverse):
    slope = height / width
    curvature = d_a + d_b - 2 * slope
    if inverse:
        # solve a xi^2 + b xi + c = 0 for xi in [0, 1] (Durkan et al. 2019, Eqs. 6-8)
        offset = values - y_a
        a = height * (slope - d_a) + offset * curvature
        b = height * d_a - offset * curvature
        c = -slope * offset
        discriminant = (b * b - 4 * a * c).clamp(min=0.0)
        xi = ((2 * c) / (-b - torch.sqrt(discriminant))).clamp(0.0, 1.0)
        outputs = x_a + xi * width
    else:
        xi = ((values - x_a) / width).clamp(0.0, 1.0)
        both = xi * (1 - xi)
        outputs = y_a + height * (slope * xi * xi + d_a * both) / (slope + curvature * both)
    both = xi * (1 - xi)
    numerator = slope * slope * (d_b * xi * xi + 2 * slope * both + d_a * (1 - xi) ** 2)
    log_grad = torch.log(numerator) - 2 * torch.log(slope + curvature * both)
    return outputs, log_grad


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
