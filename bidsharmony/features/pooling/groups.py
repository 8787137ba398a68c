"""The rotation group SO(n): Lie algebra coordinates, expm/Cayley maps, equivariant frames.

Lokhande et al. (CVPR 2022, §3.1) let a change of covariate act on the latent space as a
rotation. This module holds the group-theoretic pieces, independent of any network:

* :func:`hat` — ``R^m -> so(n)``, ``m = n(n-1)/2``: the skew-symmetric matrix whose upper
  triangle (row-major) holds the coordinates; ``hat(1_m)`` is the generator the paper uses;
* :func:`expm_map` / :func:`cayley_map` — ``so(n) -> SO(n)``: the matrix exponential and the
  Cayley map ``A -> (I - A)(I + A)^-1`` (both give orthogonal matrices with determinant +1;
  the Cayley map never reaches rotations with eigenvalue -1);
* :func:`covariate_group_table` — the lookup ``G(i, j) = map((i - j) * s * hat(1_m))`` for every
  difference of covariate bins ``i - j`` (Eq. 3), with ``G(j, i) = G(i, j)^T = G(i, j)^-1`` kept
  exact;
* :func:`frame_to_rotation` — an **exactly** SO(n)-equivariant map from a frame of ``n - 1``
  vectors of ``R^n`` to SO(n): ``frame_to_rotation(g A) = g frame_to_rotation(A)`` for every
  ``g`` in SO(n). It is the last layer of the τ network (see :mod:`.networks` for why τ needs
  more than one point of the sphere to be equivariant).
"""

from __future__ import annotations

import math

import torch

GROUP_MAPS = ("expm", "cayley")


def lie_algebra_dim(n: int) -> int:
    """``m = n(n-1)/2``, the dimension of so(n) (and of SO(n))."""
    return n * (n - 1) // 2


def hat(coordinates: torch.Tensor, n: int) -> torch.Tensor:
    """Skew-symmetric ``(..., n, n)`` matrices from ``(..., m)`` so(n) coordinates.

    The coordinates fill the strict upper triangle row by row; the lower triangle is their
    negative, so ``hat(v).T == -hat(v)``.
    """
    m = lie_algebra_dim(n)
    if coordinates.shape[-1] != m:
        raise ValueError(f"so({n}) has {m} coordinates, got {coordinates.shape[-1]}")
    rows, cols = torch.triu_indices(n, n, offset=1)
    out = coordinates.new_zeros(*coordinates.shape[:-1], n, n)
    out[..., rows, cols] = coordinates
    return out - out.transpose(-1, -2)


def expm_map(skew: torch.Tensor) -> torch.Tensor:
    """Matrix exponential ``so(n) -> SO(n)`` (batched)."""
    return torch.linalg.matrix_exp(skew)


def cayley_map(skew: torch.Tensor) -> torch.Tensor:
    """Cayley map ``A -> (I - A)(I + A)^-1`` from so(n) to SO(n) (batched).

    ``I + A`` is always invertible for skew-symmetric ``A`` (its eigenvalues are ``1 + i t``).
    """
    eye = torch.eye(skew.shape[-1], dtype=skew.dtype, device=skew.device).expand_as(skew)
    # X = (I - A)(I + A)^-1  <=>  X (I + A) = I - A
    return torch.linalg.solve(eye + skew, eye - skew, left=False)


def group_map(name: str):
    """``expm_map`` or ``cayley_map`` by name."""
    if name == "expm":
        return expm_map
    if name == "cayley":
        return cayley_map
    raise ValueError(f"group map must be one of {', '.join(GROUP_MAPS)}, got {name!r}")


def covariate_generator(n: int, scale: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    """``scale * hat(1_m)``: the so(n) direction along which a unit covariate step rotates."""
    return scale * hat(torch.ones(lie_algebra_dim(n), dtype=dtype), n)


def covariate_group_table(n: int, n_bins: int, *, scale: float = 1.0, kind: str = "expm",
                          dtype=torch.float64) -> torch.Tensor:
    """``G(i, j)`` for every bin difference ``d = i - j`` in ``-(n_bins-1) .. n_bins-1``.

    Parameters
    ----------
    n : int
        The group is SO(n).
    n_bins : int
        Number of covariate bins (``i, j`` in ``0 .. n_bins-1``).
    scale : float
        Multiplies the generator (the paper uses 1: ``G(i, j) = expm((i - j) 1_m)``).
    kind : {"expm", "cayley"}
        The map from so(n) to SO(n).

    Returns
    -------
    torch.Tensor
        ``(2 n_bins - 1, n, n)``; entry ``d + n_bins - 1`` is ``G`` for ``i - j = d``. Entries
        for negative ``d`` are the transposes (= inverses) of those for ``-d``, exactly.
    """
    mapping = group_map(kind)
    generator = covariate_generator(n, scale, dtype)
    steps = torch.arange(0, n_bins, dtype=dtype)
    positive = mapping(steps[:, None, None] * generator)  # d = 0 .. n_bins-1
    negative = positive[1:].flip(0).transpose(-1, -2)      # d = -(n_bins-1) .. -1
    return torch.cat([negative, positive], dim=0)


def random_rotation(n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
    """A Haar-random element of SO(n) (QR of a Gaussian matrix, signs fixed, det forced to +1)."""
    a = torch.randn(n, n, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def frame_to_rotation(frame: torch.Tensor) -> torch.Tensor:
    """Complete a frame of ``n - 1`` vectors to a rotation, SO(n)-equivariantly.

    Parameters
    ----------
    frame : torch.Tensor
        ``(..., n, n - 1)``, columns linearly independent.

    Returns
    -------
    torch.Tensor
        ``(..., n, n)`` in SO(n): Gram–Schmidt of the columns (QR with a positive diagonal of
        ``R``, unique), completed by the unit vector orthogonal to them that makes the
        determinant +1. Because QR commutes with a left rotation and the completing vector is
        unique, ``frame_to_rotation(g @ frame) = g @ frame_to_rotation(frame)`` for any ``g``
        in SO(n) (exactly, up to rounding).
    """
    n = frame.shape[-2]
    if frame.shape[-1] != n - 1:
        raise ValueError(f"a frame for SO({n}) has {n - 1} columns, got {frame.shape[-1]}")
    q, r = torch.linalg.qr(frame, mode="reduced")
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    q = q * signs.unsqueeze(-2)
    eye = torch.eye(n, dtype=frame.dtype, device=frame.device)
    projector = eye - q @ q.transpose(-1, -2)          # = u u^T, u the missing direction
    diag = torch.diagonal(projector, dim1=-2, dim2=-1)  # u_k^2
    pick = diag.argmax(dim=-1, keepdim=True)            # a coordinate where |u_k| is largest
    column = torch.gather(projector, -1, pick.unsqueeze(-2).expand(*projector.shape[:-1], 1))
    u = column / torch.sqrt(torch.gather(diag, -1, pick)).unsqueeze(-1).clamp_min(1e-30)
    det = torch.linalg.det(torch.cat([q, u], dim=-1))
    u = u * torch.where(det < 0, -torch.ones_like(det), torch.ones_like(det)).unsqueeze(-1).unsqueeze(-1)
    return torch.cat([q, u], dim=-1)


def orthogonality_error(rotations: torch.Tensor) -> float:
    """``max |R^T R - I|`` over a batch of matrices."""
    eye = torch.eye(rotations.shape[-1], dtype=rotations.dtype)
    return float((rotations.transpose(-1, -2) @ rotations - eye).abs().max())


def rotation_angle_span(n: int, scale: float = 1.0) -> float:
    """Largest rotation angle (radians) of one covariate step ``expm(scale * hat(1_m))``.

    The eigenvalues of ``hat(1_m)`` are ``± i cot((2k - 1) π / (2n))``; the largest is
    ``cot(π / (2n))`` (about ``2n/π``).
    """
    return float(abs(scale) / math.tan(math.pi / (2 * n))) if n > 1 else 0.0
