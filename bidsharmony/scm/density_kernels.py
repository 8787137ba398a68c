"""Compiled training kernels of element-wise flow layers: the density and its gradient, and
the spline tables and theirs.

In training, every step evaluates ``u = (x - loc) / (softplus(raw_scale) + floor)``, the
spline ``eps = s(u)`` (data -> noise) and the log-derivative ``log|s'(u)| - log(scale)`` for
each element of the batch, then back-propagates through them. At a batch of 64 rows the
vectorised version is dominated by per-operation overhead (~25 NumPy passes and a gather and
a scatter-add in torch, each way), so both directions run here as one loop per element. The
backward pass accumulates the gradients of the per-bin quantities straight into the
``(C, L, D, K)`` table gradient, where the vectorised version gathered and scattered.

The formulas are those of :mod:`.splines` (``_rational_quadratic``, ``_linear_rational``),
written for one element, with their partial derivatives written out; the tests check values
and gradients against autograd through the torch versions.
"""

from __future__ import annotations

import math

import numpy as np

from .kernels import KIND_CODES, _compile, row_levels

#: torch's softplus is linear above this (its default ``threshold``)
_SOFTPLUS_LINEAR = 20.0


@_compile
def _softplus(raw):
    """``softplus(raw)`` and its derivative, as torch computes it."""
    if raw > _SOFTPLUS_LINEAR:
        return raw, 1.0
    # log(1 + e) rather than log1p(e): half the cost here, and the two differ by at most
    # ~1e-16 in absolute terms, far below the scale's floor
    exponential = math.exp(raw)
    return math.log(1.0 + exponential), exponential / (1.0 + exponential)


@_compile
def _rational_quadratic(v, x_a, width, y_a, height, d_a, d_b):
    """Spline value and derivative at ``v`` (inside the interval), Durkan et al. (2019)."""
    xi = min(max((v - x_a) / width, 0.0), 1.0)
    slope = height / width
    both = xi * (1 - xi)
    denominator = slope + (d_a + d_b - 2 * slope) * both
    outputs = y_a + height * (slope * xi * xi + d_a * both) / denominator
    derivative_part = d_b * xi * xi + 2 * slope * both + d_a * (1 - xi) ** 2
    return outputs, slope * slope * derivative_part / (denominator * denominator)


@_compile
def _rational_quadratic_grad(v, x_a, width, y_a, height, d_a, d_b, g_y, g_l):
    """Gradient of ``g_y * y + g_l * log y'`` (:func:`_rational_quadratic`'s value and the
    log of its derivative).

    Returns ``(g_v, g_x_a, g_width, g_y_a, g_height, g_d_a, g_d_b)``.
    """
    raw_xi = (v - x_a) / width
    xi = min(max(raw_xi, 0.0), 1.0)
    slope = height / width
    curvature = d_a + d_b - 2 * slope
    both = xi * (1 - xi)
    one_minus = 1 - xi
    denominator = slope + curvature * both
    ratio = (slope * xi * xi + d_a * both) / denominator
    inv_m = 1 / (d_b * xi * xi + 2 * slope * both + d_a * one_minus * one_minus)
    inv_q = 1 / denominator
    d_denominator_d_xi = curvature * (1 - 2 * xi)
    g_y_h = g_y * height * inv_q
    g_xi = 0.0
    if 0.0 <= raw_xi <= 1.0:  # the clamp of xi passes no gradient
        g_xi = (g_y_h * (2 * slope * xi + d_a * (1 - 2 * xi) - ratio * d_denominator_d_xi)
                + g_l * (2 * (d_b * xi + slope * (1 - 2 * xi) - d_a * one_minus) * inv_m
                         - 2 * d_denominator_d_xi * inv_q))
    g_c = -(g_y_h * ratio + 2 * g_l * inv_q) * both
    g_s = g_y_h * (xi * xi - ratio) + g_l * (2 / slope + 2 * both * inv_m - 2 * inv_q) - 2 * g_c
    g_d_a = g_y_h * both + g_l * one_minus * one_minus * inv_m + g_c
    g_d_b = g_l * xi * xi * inv_m + g_c
    return (g_xi / width, -g_xi / width, -(g_s * slope + g_xi * raw_xi) / width, g_y,
            g_y * ratio + g_s / width, g_d_a, g_d_b)


@_compile
def _linear_rational_pieces(v, x_a, width, y_a, height, d_a, d_b, lam):
    y_b = y_a + height
    slope = height / width
    w_b = math.sqrt(d_a / d_b)
    w_m = (lam * d_a + (1 - lam) * w_b * d_b) / slope
    norm_m = (1 - lam) + lam * w_b
    y_m = ((1 - lam) * y_a + lam * w_b * y_b) / norm_m
    raw_phi = (v - x_a) / width
    phi = min(max(raw_phi, 0.0), 1.0)
    return y_b, slope, w_b, w_m, norm_m, y_m, raw_phi, phi


@_compile
def _linear_rational(v, x_a, width, y_a, height, d_a, d_b, lam):
    """Spline value and derivative at ``v`` (inside the interval), Dolatabadi et al. (2020)."""
    y_b, slope, w_b, w_m, norm_m, y_m, raw_phi, phi = _linear_rational_pieces(
        v, x_a, width, y_a, height, d_a, d_b, lam)
    if phi <= lam:
        denominator = (lam - phi) + w_m * phi
        outputs = (y_a * (lam - phi) + w_m * y_m * phi) / denominator
        gradient = lam * w_m * (y_m - y_a) / denominator ** 2
    else:
        denominator = w_m * (1 - phi) + w_b * (phi - lam)
        outputs = (w_m * y_m * (1 - phi) + w_b * y_b * (phi - lam)) / denominator
        gradient = (1 - lam) * w_b * w_m * (y_b - y_m) / denominator ** 2
    return outputs, gradient / width


@_compile
def _linear_rational_grad(v, x_a, width, y_a, height, d_a, d_b, lam, g_y, g_l):
    """Gradient of ``g_y * y + g_l * log y'`` (:func:`_linear_rational`'s value and the log
    of its derivative).

    Returns ``(g_v, g_x_a, g_width, g_y_a, g_height, g_d_a, g_d_b, g_lam)``.
    """
    y_b, slope, w_b, w_m, norm_m, y_m, raw_phi, phi = _linear_rational_pieces(
        v, x_a, width, y_a, height, d_a, d_b, lam)
    g_w_b, g_y_b, g_y_a = 0.0, 0.0, 0.0
    if phi <= lam:
        # y = num / den, num = y_a (lam - phi) + w_m y_m phi, den = (lam - phi) + w_m phi,
        # log y' = log lam + log w_m + log(y_m - y_a) - 2 log den (- log width, below)
        denominator = (lam - phi) + w_m * phi
        outputs = (y_a * (lam - phi) + w_m * y_m * phi) / denominator
        g_num = g_y / denominator
        g_den = -(g_y * outputs + 2 * g_l) / denominator
        gap = y_m - y_a
        g_a = g_num * y_a + g_den  # d/d(lam - phi)
        g_phi = g_num * w_m * y_m + g_den * w_m - g_a
        g_lam = g_a + g_l / lam
        g_w_m = (g_num * y_m + g_den) * phi + g_l / w_m
        g_y_m = g_num * w_m * phi + g_l / gap
        g_y_a = g_num * (lam - phi) - g_l / gap
    else:
        # num = w_m y_m (1 - phi) + w_b y_b (phi - lam), den = w_m (1 - phi) + w_b (phi - lam),
        # log y' = log(1 - lam) + log w_b + log w_m + log(y_b - y_m) - 2 log den
        one_minus, past = 1 - phi, phi - lam
        denominator = w_m * one_minus + w_b * past
        outputs = (w_m * y_m * one_minus + w_b * y_b * past) / denominator
        g_num = g_y / denominator
        g_den = -(g_y * outputs + 2 * g_l) / denominator
        gap = y_b - y_m
        g_past = (g_num * y_b + g_den) * w_b  # d/d(phi - lam)
        g_phi = -(g_num * y_m + g_den) * w_m + g_past
        g_lam = -g_past - g_l / (1 - lam)
        g_w_m = (g_num * y_m + g_den) * one_minus + g_l / w_m
        g_w_b = (g_num * y_b + g_den) * past + g_l / w_b
        g_y_m = g_num * w_m * one_minus - g_l / gap
        g_y_b = g_num * w_b * past + g_l / gap
    # y_m = ((1 - lam) y_a + lam w_b y_b) / norm_m, norm_m = (1 - lam) + lam w_b
    g_y_a += g_y_m * (1 - lam) / norm_m
    g_y_b += g_y_m * lam * w_b / norm_m
    g_w_b += g_y_m * lam * (y_b - y_m) / norm_m
    g_lam += g_y_m * ((w_b * y_b - y_a) - y_m * (w_b - 1)) / norm_m
    # w_m = (lam d_a + (1 - lam) w_b d_b) / slope
    g_lam += g_w_m * (d_a - w_b * d_b) / slope
    g_d_a = g_w_m * lam / slope
    g_d_b = g_w_m * (1 - lam) * w_b / slope
    g_w_b += g_w_m * (1 - lam) * d_b / slope
    g_slope = -g_w_m * w_m / slope
    # w_b = sqrt(d_a / d_b); y_b = y_a + height; slope = height / width
    g_d_a += g_w_b * w_b / (2 * d_a)
    g_d_b -= g_w_b * w_b / (2 * d_b)
    g_y_a += g_y_b
    g_height = g_y_b + g_slope / width
    # phi = clamp((v - x_a) / width, 0, 1); the log-derivative also has - log(width)
    if not 0.0 <= raw_phi <= 1.0:
        g_phi = 0.0
    g_width = -(g_slope * slope + g_phi * raw_phi + g_l) / width
    return g_phi / width, -g_phi / width, g_width, g_y_a, g_height, g_d_a, g_d_b, g_lam


@_compile
def _find_bin(value, table, level, j):
    """Bin of ``value`` among the inner x-knots ``table[0, level, j, 1:]``."""
    k = 0
    for edge in range(1, table.shape[3]):
        k += value >= table[0, level, j, edge]
    return k


@_compile
def _accumulate(g_table, level, j, k, grads):
    """Add a bin's quantity gradients ``grads[1:]`` to the table gradient; return ``grads[0]``."""
    for column in range(1, len(grads)):
        g_table[column - 1, level, j, k] += grads[column]
    return grads[0]


@_compile
def _density_forward(kind, inputs, loc, raw_scale, table, which, bound, floor, outputs, logdet,
                     normalised, scale, softplus_grad, bins):
    n, features = inputs.shape
    for i in range(n):
        level = which[i]
        for j in range(features):
            softplus, softplus_grad[i, j] = _softplus(raw_scale[i, j])
            scale[i, j] = softplus + floor
            u = (inputs[i, j] - loc[i, j]) / scale[i, j]
            normalised[i, j] = u
            derivative = 1.0 / scale[i, j]
            k = -1  # identity tail
            if -bound <= u <= bound:
                k = _find_bin(u, table, level, j)
                if kind == 1:
                    u, spline_derivative = _rational_quadratic(
                        u, table[0, level, j, k], table[1, level, j, k], table[2, level, j, k],
                        table[3, level, j, k], table[4, level, j, k], table[5, level, j, k])
                else:
                    u, spline_derivative = _linear_rational(
                        u, table[0, level, j, k], table[1, level, j, k], table[2, level, j, k],
                        table[3, level, j, k], table[4, level, j, k], table[5, level, j, k],
                        table[6, level, j, k])
                derivative *= spline_derivative
            bins[i, j] = k
            outputs[i, j] = u
            logdet[i, j] = math.log(derivative)  # one logarithm per element: they dominate


@_compile
def _density_backward(kind, table, which, normalised, scale, softplus_grad, bins, g_outputs, g_logdet,
                      g_inputs, g_loc, g_raw_scale, g_table):
    n, features = normalised.shape
    for i in range(n):
        level = which[i]
        for j in range(features):
            u, k = normalised[i, j], bins[i, j]
            g_u, g_l = g_outputs[i, j], g_logdet[i, j]
            if k >= 0:
                c = table[:, level, j, k]
                # (the two kinds return tuples of different lengths: one call per branch)
                if kind == 1:
                    g_u = _accumulate(g_table, level, j, k, _rational_quadratic_grad(
                        u, c[0], c[1], c[2], c[3], c[4], c[5], g_u, g_l))
                else:
                    g_u = _accumulate(g_table, level, j, k, _linear_rational_grad(
                        u, c[0], c[1], c[2], c[3], c[4], c[5], c[6], g_u, g_l))
            # u = (x - loc) / scale and the -log(scale) of the log-derivative
            g_x = g_u / scale[i, j]
            g_inputs[i, j] = g_x
            g_loc[i, j] = -g_x
            g_raw_scale[i, j] = -(g_u * u + g_l) / scale[i, j] * softplus_grad[i, j]


def affine_spline_density(kind: str, inputs: np.ndarray, loc: np.ndarray, raw_scale: np.ndarray,
                          table: np.ndarray, which=None, bound: float = 4.0, floor: float = 1e-3):
    """Affine step, spline (data -> noise, identity tails) and log-derivative per element.

    Parameters
    ----------
    kind : {"rational-quadratic", "linear-rational"}
    inputs, loc, raw_scale : numpy.ndarray
        ``(n, D)`` float64 (views of any strides); the scale is ``softplus(raw_scale) + floor``.
    table : numpy.ndarray
        ``(C, L, D, K)`` per-bin table (:func:`.splines.spline_table`).
    which : numpy.ndarray, optional
        ``(n,)`` level of each row; ``None`` when ``L == 1`` (or ``L == n``: row ``i`` uses
        level ``i``).
    bound, floor : float

    Returns
    -------
    outputs, logdet : numpy.ndarray
        ``(n, D)``: ``eps`` and ``log|d eps / d x|``.
    saved : tuple
        What :func:`affine_spline_density_backward` needs (rows' levels, normalised inputs,
        scales, softplus derivatives, bins).
    """
    shape = inputs.shape
    outputs, logdet, normalised, scale, softplus_grad = (np.empty(shape) for _ in range(5))
    bins = np.empty(shape, dtype=np.int64)
    levels = row_levels(which, shape[0], table.shape[1])
    _density_forward(KIND_CODES[kind], inputs, loc, raw_scale, table, levels, float(bound), float(floor),
                     outputs, logdet, normalised, scale, softplus_grad, bins)
    return outputs, logdet, (levels, normalised, scale, softplus_grad, bins)


def affine_spline_density_backward(kind: str, table: np.ndarray, saved, g_outputs: np.ndarray,
                                   g_logdet: np.ndarray):
    """Gradients of :func:`affine_spline_density` weighted by ``g_outputs`` and ``g_logdet``.

    Returns
    -------
    g_inputs, g_loc, g_raw_scale : numpy.ndarray
        ``(n, D)`` each.
    g_table : numpy.ndarray
        Like ``table``.
    """
    shape = saved[1].shape
    g_inputs, g_loc, g_raw_scale = (np.empty(shape) for _ in range(3))
    g_table = np.zeros(table.shape)
    _density_backward(KIND_CODES[kind], table, *saved, np.asarray(g_outputs), np.asarray(g_logdet),
                      g_inputs, g_loc, g_raw_scale, g_table)
    return g_inputs, g_loc, g_raw_scale, g_table


# ------------------------------------------------------------------ knot tables
# Training recomputes the spline tables of a batch's levels at every step. Their arithmetic
# is small, but in torch it takes ~40 operations forward and ~30 backward; here the softmax,
# softplus and sigmoid stay in torch (vectorised exp is ~3x cheaper than scalar exp) and the
# cumulative sums, knots and differences, and the whole backward pass, run compiled.

@_compile
def _assemble_table(softmax, derivatives, lambdas, bound, minima, table):
    """Bin table ``(C, R, K)`` of ``R`` splines from their normalised parameters.

    ``softmax (R, 2, K)``: softmaxes of the bin widths and heights; ``derivatives (R, K - 1)``:
    inner-knot derivatives; ``lambdas (R, K)`` (linear-rational, else ``(R, 0)``);
    ``minima``: minimum bin width and height. The operations are those of
    :func:`.splines.spline_knots` and :func:`.splines.bin_table`, in the same order, so the
    table is the same to the last bit.
    """
    rows, _, num_bins = softmax.shape
    for r in range(rows):
        for group in range(2):  # widths -> x knots, heights -> y knots
            stretch = 1 - minima[group] * num_bins
            left, cumulative = -bound, 0.0
            for k in range(num_bins):
                cumulative += minima[group] + stretch * softmax[r, group, k]
                right = bound if k == num_bins - 1 else cumulative * (2 * bound) - bound
                table[2 * group, r, k] = left
                table[2 * group + 1, r, k] = right - left
                left = right
        # derivatives are 1 at both ends (the identity tails)
        for k in range(num_bins):
            table[4, r, k] = 1.0 if k == 0 else derivatives[r, k - 1]
            table[5, r, k] = 1.0 if k == num_bins - 1 else derivatives[r, k]
        for k in range(lambdas.shape[1]):
            table[6, r, k] = lambdas[r, k]


@_compile
def _table_backward(softmax, derivative_slopes, lambda_slopes, bound, minima, g_table, g_params):
    """Gradient of :func:`_assemble_table` with respect to the unconstrained parameters.

    ``derivative_slopes (R, K - 1)`` and ``lambda_slopes (R, K)`` are the derivatives of the
    softplus and of the scaled sigmoid at the parameters; ``g_params (R, P)`` is written.
    """
    rows, _, num_bins = softmax.shape
    g_sizes = np.empty(num_bins)
    for r in range(rows):
        for group in range(2):
            # the knots e_0..e_K enter as (left, size) = (e_k, e_{k+1} - e_k); the inner ones
            # are e_k = 2B (sizes_0 + ... + sizes_{k-1}) - B, so sizes_i gets the e_k, k > i
            g_sizes[num_bins - 1] = 0.0
            suffix = 0.0
            for k in range(num_bins - 1, 0, -1):
                g_knot = (g_table[2 * group, r, k] - g_table[2 * group + 1, r, k]
                          + g_table[2 * group + 1, r, k - 1])
                suffix += g_knot * (2 * bound)
                g_sizes[k - 1] = suffix
            stretch = 1 - minima[group] * num_bins
            weighted = 0.0
            for k in range(num_bins):
                weighted += stretch * g_sizes[k] * softmax[r, group, k]
            for k in range(num_bins):  # through the softmax
                g_params[r, group * num_bins + k] = softmax[r, group, k] * (stretch * g_sizes[k] - weighted)
        for k in range(num_bins - 1):  # inner knot k + 1 is d_b of bin k and d_a of bin k + 1
            g_params[r, 2 * num_bins + k] = (g_table[4, r, k + 1] + g_table[5, r, k]) * derivative_slopes[r, k]
        for k in range(lambda_slopes.shape[1]):
            g_params[r, 3 * num_bins - 1 + k] = g_table[6, r, k] * lambda_slopes[r, k]


def assemble_table(softmax: np.ndarray, derivatives: np.ndarray, lambdas, bound: float, minima) -> np.ndarray:
    """:func:`_assemble_table` into a new ``(C, R, K)`` array (``lambdas`` ``None``: C = 6)."""
    rows, _, num_bins = softmax.shape
    lambdas = np.zeros((rows, 0)) if lambdas is None else lambdas
    table = np.empty((6 if lambdas.shape[1] == 0 else 7, rows, num_bins))
    _assemble_table(softmax, derivatives, lambdas, float(bound), np.asarray(minima, dtype=np.float64), table)
    return table


def table_backward(softmax: np.ndarray, derivative_slopes: np.ndarray, lambda_slopes, bound: float, minima,
                   g_table: np.ndarray) -> np.ndarray:
    """Gradient ``(R, P)`` of :func:`assemble_table`'s parameters (see :func:`_table_backward`)."""
    rows, _, num_bins = softmax.shape
    lambda_slopes = np.zeros((rows, 0)) if lambda_slopes is None else lambda_slopes
    g_params = np.empty((rows, 3 * num_bins - 1 + lambda_slopes.shape[1]))
    _table_backward(softmax, derivative_slopes, lambda_slopes, float(bound), np.asarray(minima, dtype=np.float64),
                    np.ascontiguousarray(g_table), g_params)
    return g_params
