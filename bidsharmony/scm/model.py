"""A deep structural causal model: mechanisms on a graph, with counterfactual inference.

:class:`FlowSCM` holds one mechanism per node of a :class:`~.graph.CausalGraph` and answers
the three rungs of Pearl's ladder on tensors:

* association — :meth:`FlowSCM.log_prob` (``sum_k log p(x_k | pa_k)``) and :meth:`FlowSCM.sample`;
* intervention — :meth:`FlowSCM.sample` with ``do={...}``;
* counterfactuals — :meth:`FlowSCM.counterfactual`: abduction (``eps = f^-1(x; pa)``; Gumbel
  posterior for discrete nodes), action (``do``), prediction (``x' = f(eps; pa')``).

Values are a dict ``{node: tensor}``: discrete nodes hold integer codes ``(n,)``, continuous
nodes float ``(n, dim)``. Everything runs in float64: the inverse of spline flows is exact to
~1e-12 then, and abduction followed by prediction reproduces the input.
"""

from __future__ import annotations

import torch
from torch import nn

from .graph import CausalGraph
from .mechanisms import FlowMechanism, build_mechanism

DTYPE = torch.float64


class FlowSCM(nn.Module):
    """Structural causal model with normalizing-flow and Gumbel-max mechanisms.

    Parameters
    ----------
    graph : CausalGraph
    context_hidden : sequence of int
        Hidden layers of each continuous mechanism's context network.
    context_features : int
        Width of the context embedding.
    hidden_features : int
        MADE width (autoregressive flows).
    num_bins : int
        Spline bins.
    tail_bound : float
        Spline interval ``[-B, B]`` (identity tails outside).
    """

    def __init__(self, graph: CausalGraph, *, context_hidden=(64, 64), context_features: int = 32,
                 hidden_features: int = 64, num_bins: int = 8, tail_bound: float = 4.0):
        super().__init__()
        self.graph = graph
        options = dict(context_hidden=tuple(context_hidden), context_features=context_features,
                       hidden_features=hidden_features, num_bins=num_bins, tail_bound=tail_bound)
        mechanisms = {}
        for name, spec in graph.nodes.items():
            parent_widths = {p: mechanisms[p].encoding_features for p in spec.parents}
            discrete = [p for p in spec.parents if graph.nodes[p].discrete]
            mechanisms[name] = build_mechanism(spec, parent_widths, discrete, **options)
        self.mechanisms = nn.ModuleDict(mechanisms)
        self.to(DTYPE)

    # ------------------------------------------------------------------ helpers
    def parent_context(self, values: dict, name: str):
        """Concatenated encodings of ``name``'s parents, or ``None`` for a root node."""
        parents = self.graph.parents(name)
        if not parents:
            return None
        return torch.cat([self.mechanisms[p].encode(values[p]) for p in parents], dim=-1)

    @staticmethod
    def n_rows(values: dict) -> int:
        return next(iter(values.values())).shape[0]

    def initialise(self, values: dict, nodes=None) -> None:
        """Data-dependent constants (normalisations, initial logits) before training.

        ``nodes`` (default all) limits it to some mechanisms; their parents must have been
        initialised already.
        """
        with torch.no_grad():
            for name, mechanism in self.mechanisms.items():
                if nodes is None or name in nodes:
                    # parents are initialised first (topological order): their encodings are final
                    mechanism.initialise(values[name], self.parent_context(values, name))

    def _broadcast(self, name: str, value, n: int) -> torch.Tensor:
        """An intervention value as a tensor of the node's shape for ``n`` rows."""
        mechanism = self.mechanisms[name]
        if mechanism.discrete:
            tensor = torch.as_tensor(value, dtype=torch.long)
            return tensor.expand(n).clone() if tensor.dim() == 0 else tensor.view(n)
        tensor = torch.as_tensor(value, dtype=DTYPE)
        if tensor.dim() == 0:
            return tensor.expand(n, mechanism.dim).clone()
        return tensor.reshape(n, mechanism.dim)

    # ------------------------------------------------------------------ association
    def log_prob(self, values: dict, nodes=None) -> dict:
        """Per-node ``log p(x_k | pa_k)`` of ``nodes`` (default all), each of shape ``(n,)``."""
        return {name: mechanism.log_prob(values[name], self.parent_context(values, name))
                for name, mechanism in self.mechanisms.items() if nodes is None or name in nodes}

    def nll(self, values: dict, nodes=None) -> torch.Tensor:
        """Mean negative joint log-likelihood per row (over ``nodes``, default all)."""
        return -torch.stack(list(self.log_prob(values, nodes).values())).sum(dim=0).mean()

    # ------------------------------------------------------------------ counterfactuals
    def abduct(self, values: dict, nodes=None, generator=None) -> dict:
        """Exogenous noise of ``nodes`` (default all) given the observed values."""
        nodes = self.graph.order if nodes is None else nodes
        return {name: self.mechanisms[name].abduct(values[name], self.parent_context(values, name), generator)
                for name in nodes}

    def predict(self, noises: dict, do: dict | None = None, observed: dict | None = None,
                keep=()) -> dict:
        """Run the mechanisms forward from ``noises``.

        Parameters
        ----------
        noises : dict
            Noise of every node that is neither intervened on nor kept.
        do : dict, optional
            Intervened values (constants or per-row tensors).
        observed : dict, optional
            Values used for the nodes in ``keep``.
        keep : iterable of str
            Nodes copied from ``observed`` (not downstream of any intervention).
        """
        do = dict(do or {})
        n = self.n_rows(noises) if noises else self.n_rows(observed or do)
        values = {}
        for name in self.graph.order:
            if name in do:
                values[name] = self._broadcast(name, do[name], n)
            elif name in keep:
                values[name] = observed[name]
            else:
                values[name] = self.mechanisms[name].predict(noises[name], self.parent_context(values, name))
        return values

    @torch.no_grad()
    def counterfactual(self, values: dict, do: dict, generator=None) -> dict:
        """Abduction, action, prediction.

        Nodes downstream of an intervention are recomputed from their abducted noise (in
        topological order, so a child sees its parents' counterfactual values); all others
        keep their observed values exactly. Continuous nodes use
        :meth:`~.mechanisms.FlowMechanism.transport`, which skips flow layers that cancel.

        Parameters
        ----------
        values : dict
            Observed values of every node.
        do : dict
            ``{node: value}``; a value is a constant or one per row.
        generator : torch.Generator, optional
            Randomness of the Gumbel posterior of discrete descendants.

        Returns
        -------
        dict
            Counterfactual values of every node.
        """
        unknown = set(do) - set(self.graph.order)
        if unknown:
            raise KeyError(f"cannot intervene on unknown node(s) {sorted(unknown)}")
        affected = self.graph.descendants(do) - set(do)
        n = self.n_rows(values)
        result = {}
        for name in self.graph.order:
            mechanism = self.mechanisms[name]
            if name in do:
                result[name] = self._broadcast(name, do[name], n)
            elif name not in affected:
                result[name] = values[name]
            elif isinstance(mechanism, FlowMechanism):
                result[name] = mechanism.transport(values[name], self.parent_context(values, name),
                                                   self.parent_context(result, name))
            else:  # discrete: Gumbel-max posterior noise, then the new parents' logits
                noise = mechanism.abduct(values[name], self.parent_context(values, name), generator)
                result[name] = mechanism.predict(noise, self.parent_context(result, name))
        return result

    @torch.no_grad()
    def sample(self, n: int, do: dict | None = None, generator=None) -> dict:
        """Draw ``n`` rows from the model, optionally under interventions ``do``."""
        do = dict(do or {})
        noises = {name: self.mechanisms[name].sample_noise(n, generator)
                  for name in self.graph.order if name not in do}
        return self.predict(noises, do=do)
