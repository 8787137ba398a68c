"""Maximum-likelihood training of a :class:`~.model.FlowSCM` as in Wang et al. (2021).

Adam (learning rate 3e-4, weight decay 1e-4), batches of 64, a staircase learning-rate decay
at 50 % and 75 % of the epochs, at least 100 epochs by default. A validation split (stratified
by a label, e.g. site) is held out; the weights with the best validation log-likelihood are
kept (the paper reports the best validation log-likelihood; epoch 0, the initial weights, is a
candidate too), optionally stopping early when it has not improved for ``patience`` epochs. One log line per epoch (loss, time left) goes to the
``bidsharmony.scm.training`` logger. ``nodes`` trains some mechanisms only (the
harmonizer trains the covariates' mechanisms first, then the features' with these settings).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..harmonize.errors import TrainingError
from ..utils.threads import torch_threads

LOGGER = logging.getLogger(__name__)


@dataclass
class TrainingConfig:
    """Settings of :func:`train_scm` (defaults: the paper's).

    Attributes
    ----------
    epochs : int
    batch_size : int
    learning_rate : float
    weight_decay : float
        Adam's L2 penalty.
    lr_milestones : tuple of float
        Fractions of ``epochs`` after which the learning rate is multiplied by ``lr_decay``.
    lr_decay : float
    validation_fraction : float
        Share of rows held out (stratified); 0 trains on everything and keeps the last epoch.
    patience : int or None
        Stop after this many epochs without a better validation NLL (``None``: never).
    max_grad_norm : float or None
        Gradient-norm clipping, a guard against rare spline blow-ups (``None``: off).
    seed : int
        Seeds the split, the initialisation and the batch order.
    num_threads : int
        torch intra-op threads during training.
    """

    epochs: int = 100
    batch_size: int = 64
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    lr_milestones: tuple = (0.5, 0.75)
    lr_decay: float = 0.1
    validation_fraction: float = 0.1
    patience: int | None = None
    max_grad_norm: float | None = 10.0
    seed: int = 0
    num_threads: int = 1

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and NumPy's global generators; return a dedicated torch generator."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def split_indices(n: int, fraction: float, strata: np.ndarray | None, seed: int):
    """Train/validation row indices, stratified by ``strata`` (every stratum keeps >= 1 train row)."""
    rng = np.random.default_rng(seed)
    if fraction <= 0:
        return np.arange(n), np.array([], dtype=int)
    strata = np.zeros(n, dtype=int) if strata is None else np.asarray(strata)
    train, valid = [], []
    for label in np.unique(strata):
        rows = rng.permutation(np.flatnonzero(strata == label))
        n_valid = int(round(fraction * len(rows)))
        n_valid = min(n_valid, len(rows) - 1)
        valid.append(rows[:n_valid])
        train.append(rows[n_valid:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(valid))


def _subset(values: dict, rows: torch.Tensor) -> dict:
    return {k: v[rows] for k, v in values.items()}


@torch.no_grad()
def evaluate_log_prob(scm, values: dict, chunk_rows: int = 1024, nodes=None) -> dict:
    """Per-node log-likelihoods of every row (``nodes``, default all), computed in chunks so
    memory stays bounded (a masked autoregressive spline over 145 features holds ~27 MB per
    1,000 rows and tensor)."""
    n = int(next(iter(values.values())).shape[0])
    parts = [scm.log_prob(_subset(values, torch.arange(start, min(start + chunk_rows, n))), nodes)
             for start in range(0, n, chunk_rows)]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def mean_nll(scm, values: dict, nodes=None) -> float:
    """Mean negative log-likelihood per row over ``nodes`` (default all; chunked, no gradients)."""
    parts = evaluate_log_prob(scm, values, nodes=nodes)
    return -torch.stack(list(parts.values())).sum(dim=0).mean().item()


def _format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def train_scm(scm, values: dict, config: TrainingConfig, strata=None, logger=LOGGER,
              nodes=None, label: str = "flow-SCM") -> dict:
    """Fit ``scm`` (or the mechanisms of ``nodes``) by maximum likelihood; returns the history.

    The joint log-likelihood is a sum of one term per mechanism, and mechanisms share no
    parameters, so mechanisms can be trained in separate calls with their own settings
    (parents first: a mechanism's initialisation reads its parents' encodings).

    Parameters
    ----------
    scm : FlowSCM
        Freshly built model; the trained mechanisms' normalisations are initialised here from
        all rows (validation included; see the code).
    values : dict
        All rows, ``{node: tensor}``.
    config : TrainingConfig
    strata : numpy.ndarray, optional
        Labels to stratify the validation split by (e.g. site codes).
    logger : logging.Logger
    nodes : sequence of str, optional
        Mechanisms to train (default all); the loss and the validation NLL are theirs.
    label : str
        Prefix of the log lines.

    Returns
    -------
    dict
        ``epochs`` (per-epoch train/validation NLL, learning rate, seconds), ``best_epoch``
        (0: no epoch beat the initial weights), ``initial_validation_nll``,
        ``best_validation_nll``, ``final_train_nll``, ``per_node_nll`` (validation, or train),
        ``n_train``, ``n_validation``, ``seconds``, ``config``.
    """
    with torch_threads(config.num_threads):
        generator = seed_everything(config.seed)
        n = int(next(iter(values.values())).shape[0])
        train_rows, valid_rows = split_indices(n, config.validation_fraction, strata, config.seed)
        train = _subset(values, torch.as_tensor(train_rows))
        valid = _subset(values, torch.as_tensor(valid_rows)) if len(valid_rows) else None
        nodes = list(scm.mechanisms) if nodes is None else list(nodes)
        # the closed-form initial fit (normalisation, location-scale per site) uses every row:
        # it has few parameters per site and small sites need all their scans (FCON1000: site
        # BA of the initial fit 0.068 on all rows vs 0.079 without the validation rows)
        scm.initialise(values, nodes)
        # fused: the whole Adam update in one kernel (~5 % faster steps on CPU than foreach,
        # which itself saves ~10 % over the per-tensor loop); same update up to rounding
        parameters = [p for n in nodes for p in scm.mechanisms[n].parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(parameters, lr=config.learning_rate,
                                     weight_decay=config.weight_decay, fused=True)
        milestones = sorted({max(1, int(round(f * config.epochs))) for f in config.lr_milestones
                             if 0 < f < 1})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones,
                                                         gamma=config.lr_decay)
        # the parents' encodings (one-hot codes, fixed normalisations) hold no trainable
        # parameter, so each node's context is built once rather than at every step
        contexts = {name: scm.parent_context(train, name) for name in nodes}

        def batch_nll(rows):
            log_probs = [scm.mechanisms[name].log_prob(
                train[name][rows], None if contexts[name] is None else contexts[name][rows])
                for name in nodes]
            return -torch.stack(log_probs).sum(dim=0).mean()

        history, best_state, best_nll, best_epoch = [], None, math.inf, 0
        initial_nll = None
        if valid is not None:
            # epoch 0, the initialisation (a closed-form fit): kept if no epoch does better
            scm.eval()
            initial_nll = best_nll = mean_nll(scm, valid, nodes)
            best_state = copy.deepcopy(scm.state_dict())
        started = time.perf_counter()
        n_train = len(train_rows)
        batch_size = min(config.batch_size, n_train)
        for epoch in range(1, config.epochs + 1):
            scm.train()
            order = torch.randperm(n_train, generator=generator)
            total, seen = 0.0, 0
            for start in range(0, n_train, batch_size):
                rows = order[start:start + batch_size]
                if len(rows) < 2 and n_train > 1:
                    continue  # a 1-row tail batch adds noise and nothing else
                loss = batch_nll(rows)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"{label} training diverged at epoch {epoch} (loss {loss.item()}); lower the "
                        "learning rate, use flow='affine', or check the features for outliers"
                    )
                for parameter in parameters:  # = optimizer.zero_grad(set_to_none=True), cheaper
                    parameter.grad = None
                loss.backward()
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
                optimizer.step()
                total += loss.item() * len(rows)
                seen += len(rows)
            scheduler.step()
            train_nll = total / max(seen, 1)
            scm.eval()
            valid_nll = None
            if valid is not None:
                valid_nll = mean_nll(scm, valid, nodes)
            monitored = valid_nll if valid_nll is not None else train_nll
            if valid is None or monitored < best_nll:
                best_nll, best_epoch = monitored, epoch
                best_state = copy.deepcopy(scm.state_dict())
            elapsed = time.perf_counter() - started
            left = elapsed / epoch * (config.epochs - epoch)
            history.append({"epoch": epoch, "train_nll": train_nll, "validation_nll": valid_nll,
                            "learning_rate": optimizer.param_groups[0]["lr"], "seconds": elapsed})
            logger.info(
                "%s epoch %d/%d  train NLL %.4f%s  lr %.1e  %s elapsed, ~%s left",
                label, epoch, config.epochs, train_nll,
                f"  validation NLL {valid_nll:.4f}" if valid_nll is not None else "",
                history[-1]["learning_rate"], _format_seconds(elapsed), _format_seconds(left),
            )
            if (config.patience is not None and valid is not None
                    and epoch - best_epoch >= config.patience):
                logger.info("%s: no validation improvement for %d epochs, stopping at epoch %d "
                            "(best epoch %d)", label, config.patience, epoch, best_epoch)
                break
        if best_state is not None:
            scm.load_state_dict(best_state)
        scm.eval()
        reported = valid if valid is not None else train
        per_node = {k: -v.mean().item() for k, v in evaluate_log_prob(scm, reported).items()}
        final_train = mean_nll(scm, train, nodes)
        seconds = time.perf_counter() - started
        logger.info("%s trained in %s: best epoch %d, %s NLL %.4f (train %.4f)",
                    label, _format_seconds(seconds), best_epoch,
                    "validation" if valid is not None else "train", best_nll, final_train)
        return {"epochs": history, "best_epoch": best_epoch, "initial_validation_nll": initial_nll,
                "best_validation_nll": best_nll if valid is not None else None,
                "final_train_nll": final_train, "per_node_nll": per_node,
                "n_train": int(n_train), "n_validation": int(len(valid_rows)),
                "nodes": nodes, "seconds": seconds, "config": config.to_dict()}

