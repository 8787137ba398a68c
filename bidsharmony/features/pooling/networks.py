"""The networks of equivariant dataset pooling (Lokhande et al. 2022, Algorithm 1).

Stage one — equivariance to covariates
    ``E : x -> ℓ`` (hyperspherical encoder), ``D : ℓ -> x`` (decoder) and ``τ : ℓ -> SO(n)``.
Stage two — invariance to site
    ``Φ(ℓ) = τ(ℓ) · b(τ(ℓ)^-1 · ℓ)`` (Lemma 5), decoder ``Ψ : Φ -> ℓ``, predictor ``h : Φ -> y``.

The latent space and why τ reads a frame
----------------------------------------
The paper takes ``ℓ`` on ``S^{n-1}`` and ``τ : S^{n-1} -> SO(n)`` with ``τ(g ℓ) = g τ(ℓ)``
(Fact 3). As a map into the *matrices* SO(n) (not the cosets ``G/H``) this cannot hold exactly
for ``n >= 3``: a rotation ``g != I`` fixing ``ℓ`` would give ``τ(ℓ) = g τ(ℓ)``. The paper
therefore only *encourages* it through the stage-one loss, and Lemma 5's equivariance of ``Φ``
is then approximate. Here the latent is an ``n x k`` matrix (``k >= n - 1`` columns) on the unit
sphere ``S^{nk-1}`` of ``R^{n x k}`` (a hyperspherical latent, Frobenius norm 1), on which
SO(n) acts by left multiplication ``g · ℓ = g ℓ`` — a rotation of that sphere. Its generic
points have a trivial stabilizer, so an exactly equivariant τ exists:

    ``τ(ℓ) = frame_to_rotation(ℓ · M(ℓ^T ℓ))``

where ``M`` (an MLP of the rotation-invariant Gram matrix ``ℓ^T ℓ`` plus a learned constant)
mixes the ``k`` columns into ``n - 1`` vectors, and :func:`~.groups.frame_to_rotation`
(Gram–Schmidt, completed to determinant +1) commutes with left rotations. So
``τ(g ℓ) = g τ(ℓ)`` holds to rounding error for every ``g`` in SO(n), ``τ(ℓ)^T ℓ`` is invariant,
and ``Φ(g ℓ) = g Φ(ℓ)`` holds by construction (the tests check τ to 1e-10 and Φ to 1e-5 for
random rotations, trained or untrained networks). The stage-one loss then *aligns* τ with the
covariate: ``τ(ℓ_j) ≈ G(i, j) τ(ℓ_i)``. ``b`` reads ``τ(ℓ)^T ℓ``, which depends on the orbit of
``ℓ`` only (its Gram matrix), so the age-free content of ``Φ`` is what stage one leaves outside
the pose.

The encoder's last layer is structured as pose × shape, ``ℓ ∝ expm(hat(ω(x))) S(x)`` with ``S``
upper triangular (positive diagonal): any latent with independent first columns can be written
so (QR), but the split lets stage one move a scan's pose (what τ reads) without rewriting its
shape (what ``b`` reads). In our trials it gave a clearly lower site-adversary accuracy than a
plain normalised linear last layer at a similar held-out target accuracy (benchmark tables, 2
seeds: 0.72 vs 0.79; the test table, 3 seeds: 0.53-0.59 vs 0.66-0.69), although the plain
layer reaches a lower stage-one loss on the training rows.

``Φ`` takes values in ``R^{n x p}`` (``p`` output vectors, SO(n) acting on each); the
representation written per scan is ``Φ`` flattened row-major (``n p`` numbers).

Baselines (same sizes): ``variant="naive"`` and ``"mmd"`` replace ``Φ`` by ``b(ℓ)`` (no τ,
no rotation) and skip the stage-one equivariance loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .groups import frame_to_rotation, hat

DTYPE = torch.float64
VARIANTS = ("equivariant", "mmd", "naive")


def mlp(n_in: int, hidden, n_out: int) -> nn.Sequential:
    """Fully connected network ``n_in -> hidden... -> n_out`` with SiLU (swish) activations."""
    layers, width = [], int(n_in)
    for size in hidden:
        layers += [nn.Linear(width, int(size)), nn.SiLU()]
        width = int(size)
    layers.append(nn.Linear(width, int(n_out)))
    return nn.Sequential(*layers)


def _unit_sphere(values: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale each row of ``(B, ...)`` to Frobenius norm 1."""
    norm = values.flatten(1).norm(dim=1).clamp_min(eps)
    return values / norm.view(-1, *([1] * (values.dim() - 1)))


class PoolingNetwork(nn.Module):
    """E, D, τ (stage one) and b, Ψ, h (stage two) of Algorithm 1.

    Parameters
    ----------
    n_features : int
        Input width (ROI features).
    latent_dim : int
        ``n``: the group is SO(n); latent vectors live in ``R^n``.
    frame_vectors : int
        ``k >= n - 1``: columns of the latent matrix ``ℓ`` (on the unit sphere of ``R^{n x k}``).
    output_vectors : int
        ``p``: ``Φ(ℓ)`` is ``n x p``.
    hidden : sequence of int
        Hidden layers of every network (the paper's tabular networks: one layer of 64).
    n_outputs : int
        Outputs of the predictor ``h`` (classes, or 1 for regression); 0 = no predictor.
    variant : {"equivariant", "mmd", "naive"}
        ``"equivariant"``: ``Φ = τ b(τ^T ℓ)``; the baselines use ``Φ = b(ℓ)``.
    """

    def __init__(self, n_features: int, latent_dim: int = 8, frame_vectors: int | None = None,
                 output_vectors: int = 1, hidden=(64,), n_outputs: int = 0, variant: str = "equivariant"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        n = int(latent_dim)
        k = n - 1 if frame_vectors is None else int(frame_vectors)
        if n < 2 or k < n - 1:
            raise ValueError(f"need latent_dim >= 2 and frame_vectors >= latent_dim - 1, got {n}, {k}")
        self.n, self.k, self.p = n, k, int(output_vectors)
        self.variant = variant
        self.n_outputs = int(n_outputs)
        hidden = tuple(int(h) for h in hidden)
        latent = n * k
        self.m = n * (n - 1) // 2
        self.encoder = mlp(n_features, hidden, self.m + latent)
        self._triu = torch.ones(n, k, dtype=torch.bool).triu()
        self._diag = torch.eye(n, k, dtype=torch.bool)
        self.decoder = mlp(latent, hidden, n_features)
        if variant == "equivariant":
            self._gram_rows, self._gram_cols = torch.triu_indices(k, k)
            self.tau_mixing = mlp(len(self._gram_rows), hidden, k * (n - 1))
            nn.init.zeros_(self.tau_mixing[-1].weight)
            nn.init.zeros_(self.tau_mixing[-1].bias)
            self.tau_base = nn.Parameter(torch.eye(k, n - 1, dtype=DTYPE))
        self.b = mlp(latent, hidden, n * self.p)
        self.psi = mlp(n * self.p, hidden, latent)
        self.h = mlp(n * self.p, hidden, self.n_outputs) if self.n_outputs else None
        self.to(DTYPE)

    @property
    def equivariant(self) -> bool:
        return self.variant == "equivariant"

    @property
    def representation_dim(self) -> int:
        return self.n * self.p

    # ------------------------------------------------------------------ stage one
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``ℓ = E(x)``: ``(B, n, k)`` on the unit sphere of ``R^{n x k}``.

        The MLP's output is read as a pose ``ω`` in so(n) and a shape ``S`` (upper triangular,
        softplus diagonal): ``ℓ = expm(hat(ω)) S / ||S||`` (see the module docstring).
        """
        raw = self.encoder(x)
        omega, shape = raw[:, :self.m], raw[:, self.m:].reshape(-1, self.n, self.k)
        diagonal = F.softplus(shape) + 1e-3
        shape = torch.where(self._diag, diagonal, torch.where(self._triu, shape, torch.zeros_like(shape)))
        return _unit_sphere(torch.linalg.matrix_exp(hat(omega, self.n)) @ shape)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """``D(ℓ)``: reconstructed (standardised) features."""
        return self.decoder(latent.flatten(1))

    def tau(self, latent: torch.Tensor) -> torch.Tensor:
        """``τ(ℓ)`` in SO(n), exactly equivariant: ``τ(g ℓ) = g τ(ℓ)``."""
        if not self.equivariant:
            raise RuntimeError(f"the {self.variant!r} baseline has no τ network")
        gram = latent.transpose(-1, -2) @ latent                      # invariant under ℓ -> g ℓ
        invariants = gram[:, self._gram_rows, self._gram_cols] * self.k
        mixing = self.tau_base + self.tau_mixing(invariants).view(-1, self.k, self.n - 1)
        return frame_to_rotation(latent @ mixing)

    # ------------------------------------------------------------------ stage two
    def represent(self, latent: torch.Tensor, tau: torch.Tensor | None = None) -> dict:
        """``Φ(ℓ)`` and its parts.

        Returns
        -------
        dict
            ``phi`` ``(B, n, p)``; ``invariant`` — ``b(τ^T ℓ) = τ^T Φ`` (``(B, n, p)``, the
            covariate-free part; for the baselines the same as ``phi``); ``tau`` (or None).
        """
        if self.equivariant:
            tau = self.tau(latent) if tau is None else tau
            canonical = tau.transpose(-1, -2) @ latent                 # τ(ℓ)^-1 · ℓ, invariant
            inner = self.b(canonical.flatten(1)).view(-1, self.n, self.p)
            return {"phi": tau @ inner, "invariant": inner, "tau": tau}
        inner = self.b(latent.flatten(1)).view(-1, self.n, self.p)
        return {"phi": inner, "invariant": inner, "tau": None}

    def reconstruct_latent(self, phi: torch.Tensor) -> torch.Tensor:
        """``Ψ(Φ)`` on the latent sphere."""
        return _unit_sphere(self.psi(phi.flatten(1)).view(-1, self.n, self.k))

    def predict(self, phi: torch.Tensor) -> torch.Tensor:
        """``h(Φ)``: logits (classification) or standardised value (regression)."""
        if self.h is None:
            raise RuntimeError("this model was trained without a target: it has no predictor h")
        return self.h(phi.flatten(1))

    def stage_one_parameters(self):
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        if self.equivariant:
            params += list(self.tau_mixing.parameters()) + [self.tau_base]
        return params

    def stage_two_parameters(self):
        params = list(self.b.parameters()) + list(self.psi.parameters())
        if self.h is not None:
            params += list(self.h.parameters())
        return params
