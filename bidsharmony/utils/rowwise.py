"""Row-wise arithmetic whose result for a row depends on that row alone.

A BLAS matrix product rounds differently for different numbers of rows (``gemv`` for one row,
``gemm`` kernels chosen by shape and thread count for many): the same scan harmonized alone,
inside a table, or with another thread count would differ in the last bits. The harmonizers
use these helpers where a row's numbers must not depend on how the rows were batched.
"""

from __future__ import annotations

import numpy as np


def row_products(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``rows @ matrix`` with every output row summed in the same order for any number of rows.

    Parameters
    ----------
    rows : numpy.ndarray
        ``(n, k)`` or ``(k,)``.
    matrix : numpy.ndarray
        ``(k, m)``.

    Returns
    -------
    numpy.ndarray
        ``(n, m)`` (``(m,)`` for 1-D ``rows``); row ``i`` is
        ``sum_j rows[i, j] * matrix[j]`` accumulated for ``j = 0, 1, ..., k - 1`` in
        element-wise float64 operations, so it is bit-identical whatever ``n`` and the other
        rows are. The cost is ``k`` element-wise passes over an ``(n, m)`` array: fine for the
        design matrices and principal components of the table harmonizers (``k`` up to a few
        hundred), not a replacement for BLAS on large products.
    """
    rows = np.asarray(rows, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    if rows.shape[-1] != matrix.shape[0]:
        raise ValueError(f"cannot multiply {rows.shape} by {matrix.shape}")
    flat = np.atleast_2d(rows)
    out = np.zeros((flat.shape[0], matrix.shape[1]))
    for j in range(matrix.shape[0]):
        out += flat[:, j, None] * matrix[j]
    return out[0] if rows.ndim == 1 else out


def padded_chunks(n_rows: int, size: int):
    """Cut ``n_rows`` rows into chunks of exactly ``size`` rows, for batch-invariant networks.

    A network applied to chunks of one fixed shape runs the same kernels on every row, so a
    row's output does not depend on how many rows came with it (see the module docstring);
    with :func:`~bidsharmony.utils.rowwise_torch.fixed_order_products` it does not depend on
    the row's position in the chunk either.

    Yields
    ------
    start, stop : int
        The real rows ``start:stop`` of this chunk.
    positions : numpy.ndarray
        ``size`` row positions: ``start .. stop - 1``, then ``stop - 1`` repeated as padding.
        Keep the first ``stop - start`` rows of the chunk's result.
    """
    for start in range(0, n_rows, size):
        stop = min(start + size, n_rows)
        yield start, stop, np.minimum(np.arange(start, start + size), n_rows - 1)
