"""Equivariant dataset pooling (Lokhande et al., CVPR 2022) for ROI feature tables.

``--harmonizer equivariant-pooling`` learns, per scan, a representation that is invariant to
site and equivariant to age; it does **not** return harmonized features (the output columns
are ``z001...``, latent coordinates without units).

Modules:

* :mod:`.groups` — so(n)/SO(n): hat map, expm and Cayley maps, the covariate lookup
  ``G(i, j)``, an exactly SO(n)-equivariant frame-to-rotation layer;
* :mod:`.networks` — E, D, τ (stage one) and b, Ψ, h with ``Φ = τ · b(τ^T ℓ)`` (stage two);
* :mod:`.training` — the stage-one loss (Eq. 3), the MMD between sites (Eq. 7), both stages;
* :mod:`.harmonizer` — :class:`EquivariantPooling`, the common harmonizer interface.

The paper's measures (ΔEq, Adv, M, ACC) are in :mod:`bidsharmony.evaluation.representation`.

Importing this package imports torch.
"""

from .harmonizer import NAME, EquivariantPooling

__all__ = ["NAME", "EquivariantPooling"]
