"""Adding sites to a fitted flow-SCM: fit only the new sites' conditioning, all else frozen.

A site enters the feature mechanism only through its one-hot column in the parents' encoding
``[s, a, one-hot t, extras]``. Every layer that reads that encoding (the affine head of the
element-wise flow, its spline-shape head, the context network when sites interact with age,
the context layers of a MADE) therefore holds, per site, one *column* of weights: the site's
conditioning. Adding a site means inserting a column into each of those weight matrices, at
the site's place in the sorted site list, and learning only those columns by maximum
likelihood of the new site's scans; every weight the model was fitted with stays untouched
(bit-identical), so harmonization of the known sites does not change.

:func:`expand_sites` builds the larger model and copies the fitted weights into it;
:func:`fit_new_columns` trains the new columns through :func:`torch.func.functional_call`, so
the frozen tensors are never seen by the optimiser. The site node's own prior
``Categorical(p_T)`` gets logits for the new sites that give them their share of the scans
while keeping the old logits (and so the old sites' relative odds) as they were.
"""

from __future__ import annotations

import logging
import math
import time

import torch
from torch import nn

from ...harmonize.errors import TrainingError
from ...scm.mechanisms import CategoricalMechanism, FlowMechanism
from ...scm.training import split_indices

LOGGER = logging.getLogger(__name__)


# --------------------------------------------------------------------- column bookkeeping
def _block(parent_widths: dict, node: str) -> tuple[int, int]:
    """``(start, width)`` of ``node``'s encoding among the concatenated parent encodings."""
    start = 0
    for parent, width in parent_widths.items():
        if parent == node:
            return start, width
        start += width
    raise KeyError(node)


def _encoded_codes(width: int) -> list:
    """Which category each encoding column stands for: a binary node is one 0/1 column (code
    1; code 0 is the zero vector), a categorical one one-hot (one column per code)."""
    return [1] if width == 1 else list(range(width))


def _raw_column_map(parent_widths: dict, node: str, code_map: list, added: int) -> dict:
    """Old raw context column -> new raw context column (``node``'s block becomes one-hot)."""
    start, width = _block(parent_widths, node)
    codes = _encoded_codes(width)
    grown = len(code_map) + added - width  # how many columns the block gains
    total = sum(parent_widths.values())
    return {column: (column if column < start else
                     start + code_map[codes[column - start]] if column < start + width else
                     column + grown)
            for column in range(total)}


def _space_keys(old: FlowMechanism, new: FlowMechanism, space: str, layer: str | None):
    """The input columns of a weight, as keys ``("raw", r)`` / ``("net", j)``, old and new."""

    def embedded(mechanism):
        keys = [("raw", r) for r in range(mechanism.parent_features)]
        if mechanism.context_net is not None:
            keys += [("net", j) for j in range(mechanism.context_net.net[-1].out_features)]
        return keys

    if space == "embedded":
        return embedded(old), embedded(new)
    if space == "network":
        return ([("raw", int(r)) for r in old.network_columns],
                [("raw", int(r)) for r in new.network_columns])
    # shape head: its columns index the embedded context
    old_layer, new_layer = old.get_submodule(layer), new.get_submodule(layer)
    old_keys, new_keys = embedded(old), embedded(new)
    return ([old_keys[int(c)] for c in old_layer.shape_columns],
            [new_keys[int(c)] for c in new_layer.shape_columns])


def _column_slots(old: FlowMechanism, new: FlowMechanism, node: str, code_map: list, added: int,
                  space: str, layer: str | None):
    """Where a weight's old input columns go in the larger model, and its columns to learn.

    Returns ``(targets, fresh, zero, site_columns)``: new position of every old column; the
    columns of the added sites (to learn); columns that must stay zero (a site that was the
    zero vector of a binary encoding gets an explicit one-hot column with no effect); and
    for every old site, its old column or ``None`` (zero effect), to initialise the new
    sites at the old sites' average.
    """
    raw_map = _raw_column_map(old.parent_widths, node, code_map, added)
    old_start, old_width = _block(old.parent_widths, node)
    new_start, new_width = _block(new.parent_widths, node)
    old_codes = _encoded_codes(old_width)
    old_keys, new_keys = _space_keys(old, new, space, layer)
    position = {key: index for index, key in enumerate(new_keys)}
    targets = [position[("raw", raw_map[index]) if kind == "raw" else (kind, index)]
               for kind, index in old_keys]
    fresh, zero = [], []
    for i, (kind, index) in enumerate(new_keys):
        if kind == "raw" and new_start <= index < new_start + new_width:
            code = index - new_start
            if code not in code_map:
                fresh.append(i)
            elif code_map.index(code) not in old_codes:
                zero.append(i)
    column_of_code = {old_codes[index - old_start]: i for i, (kind, index) in enumerate(old_keys)
                      if kind == "raw" and old_start <= index < old_start + old_width}
    site_columns = [column_of_code.get(code) for code in range(len(code_map))]
    return targets, fresh, zero, site_columns


def _space_of(name: str) -> tuple[str, str | None]:
    """Which input space a parameter of a flow mechanism reads (by its name)."""
    if name.startswith("context_net.net.0."):
        return "network", None
    if name.endswith("shape_head.weight"):
        return "shape", name[: -len(".shape_head.weight")]
    return "embedded", None


@torch.no_grad()
def expand_sites(old_scm, new_scm, node: str, code_map: list, prior_logits: dict) -> dict:
    """Copy ``old_scm``'s weights into ``new_scm``, which has more categories for ``node``.

    Parameters
    ----------
    old_scm, new_scm : FlowSCM
        The fitted model and a freshly built one from the graph with the added categories.
    node : str
        The categorical node that gained categories (the site).
    code_map : list of int
        New code of every old category (old code ``k`` -> ``code_map[k]``).
    prior_logits : dict
        ``{new code: logit}`` of the added categories in the node's own prior.

    Returns
    -------
    dict
        ``{parameter name: (new column indices, initial values)}`` — the only entries to
        learn; every other number in ``new_scm`` equals the old model's.
    """
    old_state, new_state = old_scm.state_dict(), new_scm.state_dict()
    added = new_scm.mechanisms[node].categories - old_scm.mechanisms[node].categories
    slots = {}
    for name, target in new_state.items():
        source = old_state[name]
        parts = name.split(".")
        mechanism_name = parts[1]
        old_mechanism = old_scm.mechanisms[mechanism_name]
        new_mechanism = new_scm.mechanisms[mechanism_name]
        local = ".".join(parts[2:])
        if source.shape == target.shape:
            if target.dtype.is_floating_point or name not in dict(new_scm.named_buffers()):
                target.copy_(source)
            continue  # integer buffers (column indices) are structural: rebuilt from the graph
        if mechanism_name == node and local == "free_logits":
            target.copy_(torch.as_tensor(
                [source[code_map.index(code)] if code in code_map else prior_logits[code]
                 for code in range(target.shape[0])], dtype=target.dtype))
            continue
        if not isinstance(new_mechanism, FlowMechanism) or node not in new_mechanism.parent_widths:
            raise RuntimeError(f"cannot add {node} categories: {name} changes shape "
                               f"{tuple(source.shape)} -> {tuple(target.shape)} in a mechanism "
                               "that is not a flow over the site")
        if not target.dtype.is_floating_point:
            continue
        space, layer = _space_of(local)
        targets, fresh, zero, site_columns = _column_slots(
            old_mechanism, new_mechanism, node, code_map, added, space, layer)
        if source.shape[:-1] != target.shape[:-1] or len(targets) != source.shape[-1] \
                or len(fresh) + len(zero) != target.shape[-1] - source.shape[-1]:
            raise RuntimeError(f"unexpected layout of {name}: {tuple(source.shape)} -> {tuple(target.shape)}")
        target.zero_()  # includes the explicit no-effect column of a formerly binary site code
        target[..., targets] = source
        # start every new site at the average effect of the fitted sites
        effects = [source[..., column] if column is not None else torch.zeros_like(source[..., 0])
                   for column in site_columns]
        initial = torch.stack(effects, dim=-1).mean(dim=-1, keepdim=True).expand(
            *source.shape[:-1], len(fresh))
        target[..., fresh] = initial
        slots[name] = (torch.as_tensor(fresh, dtype=torch.long), initial.clone())
    return slots


# --------------------------------------------------------------------------- training
class _NodeLogProb(nn.Module):
    """``log p(node | parents)`` per row as a module, for :func:`torch.func.functional_call`."""

    def __init__(self, scm, node: str):
        super().__init__()
        self.scm = scm
        self.node = node

    def forward(self, values: dict) -> torch.Tensor:
        return self.scm.mechanisms[self.node].log_prob(values[self.node],
                                                       self.scm.parent_context(values, self.node))


def _assembled(scm, slots: dict, trainable: dict) -> dict:
    """Full weight tensors with the trainable columns inserted (differentiable in them only)."""
    state = dict(scm.named_parameters())
    return {f"scm.{name}": state[name].detach().index_copy(-1, columns, trainable[name])
            for name, (columns, _) in slots.items()}


def fit_new_columns(scm, slots: dict, node: str, values: dict, *, epochs: int, batch_size: int,
                    learning_rate: float, weight_decay: float, validation_fraction: float,
                    patience: int | None, seed: int, strata=None, logger=LOGGER) -> dict:
    """Learn the new columns of ``slots`` by maximum likelihood of ``node`` (all else frozen).

    Adam with a staircase decay at 50 % and 75 % of the epochs, the best validation epoch
    kept, as in :func:`~bidsharmony.scm.training.train_scm`. The trained columns are written into ``scm``.

    Returns
    -------
    dict
        ``epochs`` history, ``best_epoch``, ``initial_nll`` / ``best_nll`` (validation, or
        train when there is no validation split), ``n_train``, ``n_validation``, ``seconds``.
    """
    generator = torch.Generator().manual_seed(seed)
    module = _NodeLogProb(scm, node)

    def nll(params, batch):
        return -torch.func.functional_call(module, params, (batch,))

    n = int(next(iter(values.values())).shape[0])
    train_rows, valid_rows = split_indices(n, validation_fraction, strata, seed)
    subset = lambda rows: {k: v[torch.as_tensor(rows)] for k, v in values.items()}  # noqa: E731
    train = subset(train_rows)
    valid = subset(valid_rows) if len(valid_rows) else None
    trainable = {name: initial.clone().requires_grad_(True) for name, (_, initial) in slots.items()}
    optimizer = torch.optim.Adam(list(trainable.values()), lr=learning_rate, weight_decay=weight_decay)
    milestones = sorted({max(1, int(round(f * epochs))) for f in (0.5, 0.75)})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    scm.eval()

    @torch.no_grad()
    def mean_nll(batch) -> float:
        params = _assembled(scm, slots, trainable)
        total, rows = 0.0, int(next(iter(batch.values())).shape[0])
        for start in range(0, rows, 1024):
            part = {k: v[start:start + 1024] for k, v in batch.items()}
            total += float(nll(params, part).sum())
        return total / rows

    monitored_set = valid if valid is not None else train
    initial_nll = mean_nll(monitored_set)
    best_nll, best_epoch = initial_nll, 0
    best = {name: tensor.detach().clone() for name, tensor in trainable.items()}
    history, started = [], time.perf_counter()
    n_train = len(train_rows)
    batch_size = min(batch_size, n_train)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n_train, generator=generator)
        total = 0.0
        for start in range(0, n_train, batch_size):
            rows = order[start:start + batch_size]
            if len(rows) < 2 and n_train > 1:
                continue
            batch = {k: v[rows] for k, v in train.items()}
            loss = nll(_assembled(scm, slots, trainable), batch).mean()
            if not torch.isfinite(loss):
                raise TrainingError(f"new-site adaptation diverged at epoch {epoch} (loss {loss.item()}); "
                                    "lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        scheduler.step()
        monitored = mean_nll(monitored_set)
        history.append({"epoch": epoch, "train_nll": total / n_train, "validation_nll":
                        monitored if valid is not None else None,
                        "learning_rate": optimizer.param_groups[0]["lr"]})
        if monitored < best_nll:
            best_nll, best_epoch = monitored, epoch
            best = {name: tensor.detach().clone() for name, tensor in trainable.items()}
        logger.info("site adaptation epoch %d/%d  NLL %.4f (best %.4f at epoch %d)",
                    epoch, epochs, monitored, best_nll, best_epoch)
        if patience is not None and epoch - best_epoch >= patience:
            break
    with torch.no_grad():
        parameters = dict(scm.named_parameters())
        for name, (columns, _) in slots.items():
            parameters[name].index_copy_(-1, columns, best[name])
    return {"epochs": history, "best_epoch": best_epoch, "initial_nll": initial_nll,
            "best_nll": best_nll, "monitored": "validation" if valid is not None else "train",
            "n_train": int(n_train), "n_validation": int(len(valid_rows)),
            "seconds": time.perf_counter() - started}


def prior_logits_for(old_logits: torch.Tensor, old_total: int, new_counts: dict) -> dict:
    """Logits of added categories so each gets its share of all scans, old logits unchanged.

    With ``Z = sum exp(old logits)``, a new logit ``log(n_new / n_old) + log Z`` gives the new
    category probability ``n_new / (n_old + sum n_new)`` and scales the old ones uniformly.
    """
    log_z = float(torch.logsumexp(old_logits.detach(), dim=0))
    return {code: math.log(count / old_total) + log_z for code, count in new_counts.items()}


def categorical_root(scm, node: str) -> CategoricalMechanism:
    mechanism = scm.mechanisms[node]
    if not isinstance(mechanism, CategoricalMechanism) or mechanism.free_logits is None:
        raise RuntimeError(f"node {node!r} is not a categorical root")
    return mechanism

