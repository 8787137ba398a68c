"""Losses and the two-stage training of Algorithm 1 (Lokhande et al. 2022).

Stage one (E, D, τ)::

    L = w_eq · L_stage1 + w_rec1 · mean_i ||x_i - D(E(x_i))||²
    L_stage1 = mean over ordered pairs (i, j) of a batch with c_i != c_j of
               ||G(i, j) τ(ℓ_i) - τ(ℓ_j)||² + ||G(i, j)^-1 τ(ℓ_j) - τ(ℓ_i)||²          (Eq. 3)

with ``c`` the covariate bin (age group) and ``G(i, j) = map((c_i - c_j) s hat(1_m))``.

Stage two (b, Ψ, h; E and τ frozen)::

    L = w_rec2 · mean ||ℓ - Ψ(Φ(ℓ))||² + w_pred · pred(y, h(Φ(ℓ))) + w_mmd · MMD         (Eq. 5-7)

``pred`` is the cross-entropy for a categorical target and the squared error of the
standardised value for a continuous one (the paper writes ``||Y - h(Φ)||²``). ``MMD`` is the
RKHS distance of Eq. 7 (the square root of the biased MMD² estimate, Gaussian kernels at 0.5,
1 and 2 times the batch's root-mean-square distance), averaged over the pairs of sites present in the
batch. The losses are means over rows and pairs (the paper writes sums), so the weights do not
depend on the batch size. Appendix A.7 (Adult) weights are 1.0 / 0.02 (stage one) and
0.1 / 1.0 / 0.1 (MMD / prediction / reconstruction); the defaults here keep 1.0 / 1.0 / 0.1 for
the equivariance, prediction and stage-two reconstruction terms but use 1.0 for the stage-one
reconstruction and for the MMD (see :class:`~.harmonizer.EquivariantPooling` for why).

Every epoch logs one line per stage to the ``bidsharmony.features.pooling.training`` logger.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...harmonize.errors import TrainingError
from .networks import DTYPE, PoolingNetwork

LOGGER = logging.getLogger(__name__)
MMD_BANDWIDTH_MULTIPLIERS = (0.5, 1.0, 2.0)


@dataclass
class PoolingConfig:
    """Training settings (see the module docstring for the losses)."""

    epochs_stage1: int = 150
    epochs_stage2: int = 60
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    equivariance_weight: float = 1.0
    reconstruction_weight_stage1: float = 1.0
    mmd_weight: float = 1.0
    prediction_weight: float = 1.0
    reconstruction_weight_stage2: float = 0.1
    mmd_on: str = "both"
    use_mmd: bool = True
    target_kind: str | None = None  # "classification", "regression" or None
    max_grad_norm: float | None = 10.0

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------ losses
def stage_one_loss(tau: torch.Tensor, bins: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Eq. 3 averaged over the ordered pairs of the batch with different covariate bins.

    Parameters
    ----------
    tau : torch.Tensor
        ``(B, n, n)`` rotations ``τ(ℓ_i)``.
    bins : torch.Tensor
        ``(B,)`` integer covariate bins ``c_i``.
    table : torch.Tensor
        :func:`~.groups.covariate_group_table`: ``G`` for every ``c_i - c_j``.

    Returns
    -------
    torch.Tensor
        Scalar; 0 when every row of the batch is in the same bin.
    """
    offset = (table.shape[0] - 1) // 2
    diff = bins[:, None] - bins[None, :]                               # c_i - c_j
    mask = diff != 0
    if not bool(mask.any()):
        return tau.sum() * 0.0
    moved = torch.einsum("tab,ibc->itac", table, tau)                 # G_t τ_i for every t
    inner = torch.einsum("itac,jac->itj", moved, tau)                 # <G_t τ_i, τ_j>
    moved_sq = (moved ** 2).sum(dim=(-1, -2))                         # ||G_t τ_i||²
    tau_sq = (tau ** 2).sum(dim=(-1, -2))
    n_rows = tau.shape[0]
    rows = torch.arange(n_rows)[:, None].expand(n_rows, n_rows)
    cols = torch.arange(n_rows)[None, :].expand(n_rows, n_rows)
    index = diff + offset
    forward = moved_sq[rows, index] + tau_sq[cols] - 2.0 * inner[rows, index, cols]  # ||G(i,j)τ_i - τ_j||²
    # ||G(i,j)^-1 τ_j - τ_i||² is the forward term of the pair (j, i): the table stores
    # G(j, i) = G(i, j)^-1 exactly, so it is the transpose of ``forward``.
    pair_loss = forward + forward.transpose(0, 1)
    return pair_loss[mask].mean()


def rbf_mmd_between_sites(z: torch.Tensor, sites: torch.Tensor,
                          multipliers=MMD_BANDWIDTH_MULTIPLIERS, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 7: RKHS distance between the sites' representations, averaged over site pairs.

    Gaussian kernels with squared bandwidths ``multipliers² ×`` the batch's mean squared pairwise
    distance (kept differentiable, so the loss is scale-invariant and cannot be lowered by
    collapsing the representation); biased MMD² per pair of sites with >= 2 rows, then
    ``sqrt(MMD² + eps)``.
    """
    z = z.flatten(1)
    labels = torch.unique(sites)
    groups = [torch.nonzero(sites == s).flatten() for s in labels]
    groups = [g for g in groups if len(g) >= 2]
    if len(groups) < 2:
        return z.sum() * 0.0
    diff = z[:, None, :] - z[None, :, :]
    sq = (diff ** 2).sum(-1)
    # Bandwidth from the batch's mean squared distance, *with* its gradient: the loss is then
    # invariant to the scale of z, so shrinking the representation cannot lower it (with a
    # detached bandwidth, collapsing every row to one point is a way to zero the MMD).
    scale = sq.sum() / (len(z) * (len(z) - 1))
    scale = scale.clamp_min(1e-12)
    kernel = sum(torch.exp(-sq / (2.0 * (m ** 2) * scale)) for m in multipliers) / len(multipliers)
    total, count = z.sum() * 0.0, 0
    for a in range(len(groups)):
        for b in range(a + 1, len(groups)):
            ga, gb = groups[a], groups[b]
            mmd2 = (kernel[ga][:, ga].mean() + kernel[gb][:, gb].mean()
                    - 2.0 * kernel[ga][:, gb].mean())
            total = total + torch.sqrt(mmd2.clamp_min(0.0) + eps)
            count += 1
    return total / count


def prediction_loss(output: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "classification":
        return F.cross_entropy(output, target)
    return F.mse_loss(output[:, 0], target)


# ------------------------------------------------------------------------------ training
def _check_finite(loss: torch.Tensor, stage: int, epoch: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(
            f"equivariant-pooling training diverged in stage {stage} at epoch {epoch} (loss "
            f"{loss.item()}); lower learning_rate or check the features for outliers")


def _batches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    size = max(2, min(batch_size, n))
    for start in range(0, n, size):
        rows = order[start:start + size]
        if len(rows) >= 2:
            yield rows


def _step(optimizer, loss, params, max_grad_norm):
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()


def train_stage_one(network: PoolingNetwork, x: torch.Tensor, bins: torch.Tensor, table: torch.Tensor | None,
                    config: PoolingConfig, generator: torch.Generator, logger=LOGGER) -> list:
    """Fit E, D (and τ for the equivariant variant); returns per-epoch mean losses."""
    params = network.stage_one_parameters()
    optimizer = torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    history, started = [], time.perf_counter()
    network.train()
    for epoch in range(1, config.epochs_stage1 + 1):
        sums = {"loss": 0.0, "equivariance": 0.0, "reconstruction": 0.0}
        seen = 0
        for rows in _batches(len(x), config.batch_size, generator):
            latent = network.encode(x[rows])
            recon = ((network.decode(latent) - x[rows]) ** 2).sum(dim=1).mean()
            loss = config.reconstruction_weight_stage1 * recon
            equi = None
            if network.equivariant:
                equi = stage_one_loss(network.tau(latent), bins[rows], table)
                loss = loss + config.equivariance_weight * equi
            _check_finite(loss, 1, epoch)
            _step(optimizer, loss, params, config.max_grad_norm)
            sums["loss"] += loss.item() * len(rows)
            sums["reconstruction"] += recon.item() * len(rows)
            sums["equivariance"] += (equi.item() if equi is not None else 0.0) * len(rows)
            seen += len(rows)
        record = {"stage": 1, "epoch": epoch, **{k: v / seen for k, v in sums.items()},
                  "seconds": time.perf_counter() - started}
        if not network.equivariant:
            record["equivariance"] = None
        history.append(record)
        logger.info("equivariant-pooling stage 1 epoch %d/%d  loss %.4f  L_stage1 %s  reconstruction %.4f  (%.1f s)",
                    epoch, config.epochs_stage1, record["loss"],
                    "-" if record["equivariance"] is None else f"{record['equivariance']:.4f}",
                    record["reconstruction"], record["seconds"])
    network.eval()
    return history


def train_stage_two(network: PoolingNetwork, x: torch.Tensor, sites: torch.Tensor, target: torch.Tensor | None,
                    config: PoolingConfig, generator: torch.Generator, logger=LOGGER) -> list:
    """Fit b, Ψ and h with E and τ frozen; returns per-epoch mean losses."""
    with torch.no_grad():
        latent_all = network.encode(x)
        tau_all = network.tau(latent_all) if network.equivariant else None
    params = network.stage_two_parameters()
    optimizer = torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    history, started = [], time.perf_counter()
    network.train()
    use_mmd = config.use_mmd and config.mmd_weight > 0
    for epoch in range(1, config.epochs_stage2 + 1):
        sums = {"loss": 0.0, "reconstruction": 0.0, "prediction": 0.0, "mmd": 0.0}
        seen = 0
        for rows in _batches(len(x), config.batch_size, generator):
            latent = latent_all[rows]
            parts = network.represent(latent, None if tau_all is None else tau_all[rows])
            phi = parts["phi"]
            recon = ((network.reconstruct_latent(phi) - latent) ** 2).sum(dim=(1, 2)).mean()
            loss = config.reconstruction_weight_stage2 * recon
            pred = mmd = None
            if network.h is not None and target is not None:
                pred = prediction_loss(network.predict(phi), target[rows], config.target_kind)
                loss = loss + config.prediction_weight * pred
            if use_mmd:
                mmd = 0.0
                if config.mmd_on in ("invariant", "both"):
                    mmd = mmd + rbf_mmd_between_sites(parts["invariant"], sites[rows])
                if config.mmd_on in ("representation", "both"):
                    mmd = mmd + rbf_mmd_between_sites(phi, sites[rows])
                loss = loss + config.mmd_weight * mmd
            _check_finite(loss, 2, epoch)
            _step(optimizer, loss, params, config.max_grad_norm)
            sums["loss"] += loss.item() * len(rows)
            sums["reconstruction"] += recon.item() * len(rows)
            sums["prediction"] += (pred.item() if pred is not None else 0.0) * len(rows)
            sums["mmd"] += (mmd.item() if mmd is not None else 0.0) * len(rows)
            seen += len(rows)
        record = {"stage": 2, "epoch": epoch, **{k: v / seen for k, v in sums.items()},
                  "seconds": time.perf_counter() - started}
        history.append(record)
        logger.info("equivariant-pooling stage 2 epoch %d/%d  loss %.4f  reconstruction %.4f  prediction %.4f  "
                    "MMD %.4f  (%.1f s)", epoch, config.epochs_stage2, record["loss"], record["reconstruction"],
                    record["prediction"], record["mmd"], record["seconds"])
    network.eval()
    return history


def to_tensor(values: np.ndarray, dtype=DTYPE) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(values), dtype=dtype)
