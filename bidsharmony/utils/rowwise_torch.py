"""Torch matrix products whose result for a row depends on that row alone.

Fixed-shape chunks (:func:`~bidsharmony.utils.rowwise.padded_chunks`) make a network run the
same kernels whatever the number of rows, but not the same arithmetic for every row: MKL's
float64 ``gemm`` on AVX-512 computes rows in pairs, and when the inner width is not a multiple
of the vector width the two rows of a pair are rounded differently. A scan's numbers would
then change in the last bit with its position in the table (seen on AMD EPYC, torch 2.13:
6 of 690 rows, 4e-11). Inside :func:`fixed_order_products`, every matrix product a network
makes through torch's Python API (``nn.Linear``, ``@``, ``addmm``, triangular solves) is
summed term by term in one fixed order with element-wise operations, which IEEE arithmetic
rounds identically for every element.

The price is one element-wise pass per term of the inner sum. That is small for the
narrow networks of the table harmonizers at transform time; training keeps BLAS.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

#: elements of a block of partial sums (4 MB of float64): larger outputs are summed a block of
#: rows at a time so that the sums stay in the cache between terms (2x faster for a
#: 2,048 x 3,335 MADE output; smaller blocks only add calls)
_BLOCK_ELEMENTS = 524288


def fixed_order_matmul(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ right`` (``torch.matmul`` broadcasting) summed over the inner index in order.

    Parameters
    ----------
    left : torch.Tensor
        ``(..., n, k)`` or ``(k,)``.
    right : torch.Tensor
        ``(..., k, m)`` or ``(k,)``.

    Returns
    -------
    torch.Tensor
        As ``torch.matmul(left, right)``; each element is
        ``((l_0 r_0 + l_1 r_1) + l_2 r_2) + ...`` — a separate multiplication and addition per
        term, never a fused one, so it does not depend on where the element sits in the tensor.
    """
    vector_left, vector_right = left.ndim == 1, right.ndim == 1
    if vector_left:
        left = left.unsqueeze(0)
    if vector_right:
        right = right.unsqueeze(-1)
    if left.shape[-1] != right.shape[-2]:
        raise ValueError(f"cannot multiply {tuple(left.shape)} by {tuple(right.shape)}")
    if left.shape[-1] == 0:
        out = torch.matmul(left, right)  # exact zeros
    elif torch.is_grad_enabled() and (left.requires_grad or right.requires_grad):
        out = left[..., :, :1] * right[..., :1, :]
        for j in range(1, left.shape[-1]):
            out = out + left[..., :, j:j + 1] * right[..., j:j + 1, :]
    else:
        # unit-stride rows of ``right``: a product with a strided row (a transposed weight) is
        # several times slower
        right = right.contiguous()
        out = torch.empty(torch.broadcast_shapes(left.shape[:-1] + (1,), right.shape[:-2] + (1, right.shape[-1])),
                          dtype=torch.result_type(left, right))
        if left.ndim == 2 and right.ndim == 2:
            # blocks of rows whose partial sums stay in the cache between terms
            step = max(16, _BLOCK_ELEMENTS // max(1, right.shape[-1]))
            for start in range(0, left.shape[0], step):
                _accumulate(left[start:start + step], right, out[start:start + step])
        else:
            _accumulate(left, right, out)
    if vector_right:
        out = out.squeeze(-1)
    if vector_left:
        out = out.squeeze(-2)
    return out


def _accumulate(left: torch.Tensor, right: torch.Tensor, out: torch.Tensor) -> None:
    """``out[...] = left @ right``, the terms added in order of the inner index, in place."""
    torch.mul(left[..., :, :1], right[..., :1, :], out=out)
    term = torch.empty_like(out)
    for j in range(1, left.shape[-1]):
        out.add_(torch.mul(left[..., :, j:j + 1], right[..., j:j + 1, :], out=term))


def fixed_order_linear(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(inputs, weight, bias)`` with :func:`fixed_order_matmul`."""
    out = fixed_order_matmul(inputs, weight.T)
    return out if bias is None else out + bias


def fixed_order_solve_triangular(matrix: torch.Tensor, rhs: torch.Tensor, *, upper: bool,
                                 left: bool = True, unitriangular: bool = False) -> torch.Tensor:
    """``torch.linalg.solve_triangular`` for one ``(d, d)`` matrix by substitution in fixed order.

    Each column of ``rhs`` (``(d, n)``; with ``left=False``, each row of ``(n, d)``) is solved
    with the same sequence of element-wise operations, whatever the other columns.
    """
    if matrix.ndim != 2 or rhs.ndim != 2:
        raise NotImplementedError("fixed-order triangular solves take one matrix and a 2-D right-hand side")
    if not left:  # X A = B  <=>  A^T X^T = B^T
        return fixed_order_solve_triangular(matrix.T, rhs.T, upper=not upper, unitriangular=unitriangular).T
    d = matrix.shape[0]
    order = range(d - 1, -1, -1) if upper else range(d)
    residual = rhs.clone()
    solution = torch.empty_like(residual)
    for i in order:
        solution[i] = residual[i] if unitriangular else residual[i] / matrix[i, i]
        rest = slice(0, i) if upper else slice(i + 1, d)
        residual[rest] = residual[rest] - matrix[rest, i, None] * solution[i]
    return solution


def _addmm(bias, mat1, mat2, *, beta=1, alpha=1, out=None):
    if out is not None:
        raise NotImplementedError("fixed-order addmm does not write into out=")
    product = fixed_order_matmul(mat1, mat2)
    if alpha != 1:
        product = product * alpha
    return product + (bias if beta == 1 else bias * beta)


def _matmul(left, right, *, out=None):
    if out is not None:
        raise NotImplementedError("fixed-order matmul does not write into out=")
    return fixed_order_matmul(left, right)


def _solve_triangular(matrix, rhs, *, upper, left=True, unitriangular=False, out=None):
    if out is not None:
        raise NotImplementedError("fixed-order solve_triangular does not write into out=")
    return fixed_order_solve_triangular(matrix, rhs, upper=upper, left=left, unitriangular=unitriangular)


_FIXED_ORDER = {
    F.linear: fixed_order_linear,
    torch.addmm: _addmm,
    torch.Tensor.addmm: _addmm,
    torch.matmul: _matmul,
    torch.Tensor.matmul: _matmul,
    torch.Tensor.__matmul__: _matmul,
    torch.mm: _matmul,
    torch.Tensor.mm: _matmul,
    torch.bmm: _matmul,
    torch.Tensor.bmm: _matmul,
    torch.linalg.solve_triangular: _solve_triangular,
}


class _FixedOrderProducts(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        replacement = _FIXED_ORDER.get(func)
        return (replacement or func)(*args, **(kwargs or {}))


@contextlib.contextmanager
def fixed_order_products():
    """Run torch's matrix products in fixed order (see the module docstring) within the block.

    Only for inference: inside the block autograd is switched off. The mode is per thread
    (torch keeps its function-mode stack per thread), so open it inside each worker thread.
    """
    with torch.no_grad(), _FixedOrderProducts():
        yield
