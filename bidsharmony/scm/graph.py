"""Causal graphs of deep structural causal models: nodes, parents, topological order.

A graph is a list of :class:`NodeSpec` (plain data, stored as JSON in saved models). The
default harmonization graph is Table 6 of Wang et al. (2021)::

    sex  s := eps_S,                          eps_S ~ Bernoulli(p_S)
    site t := eps_T,                          eps_T ~ Categorical(K, p_T)
    age  a := (Spline o Affine o Exp)(eps_A), eps_A ~ N(0, 1)
    x      := ConditionalTransform([s, a, t])(eps_X),  eps_X ~ N(0, I)

Table 6 lists the age transforms in the order they are applied to the noise (Pyro's
convention for a list of transforms): the spline acts on ``eps_A`` first, then the fixed
affine de-normalisation, then ``exp`` — so ``a = exp(mu + sigma * spline(eps_A)) > 0`` is bounded
below as the caption says (the same as Pawlowski et al. 2020, Eq. B.1). Extra observed parents
of ``x`` (e.g. intracranial volume, diagnosis) can be added as further root nodes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

KINDS = ("binary", "categorical", "continuous")


@dataclass
class NodeSpec:
    """One variable of the SCM and how its mechanism is built.

    Parameters
    ----------
    name : str
    kind : {"binary", "categorical", "continuous"}
    parents : list of str
    dim : int
        Dimension of a continuous node (1 for scalars, n_features for ``x``).
    categories : int
        Number of categories of a discrete node (2 for binary).
    log_transform : bool
        Continuous node modelled on the log scale (positive values, e.g. age, volumes).
    flow, architecture, num_layers
        Mechanism of a continuous node; see :func:`~bidsharmony.scm.flows.build_feature_flow`.
    correlated : bool
        Add the unconditional copula layer (vector nodes).
    additive_parents : list of str
        Parents that act on the mechanism only additively (no interaction with the other
        parents); see :class:`~bidsharmony.scm.mechanisms.FlowMechanism`.
    spline_conditioning : {"all", "discrete"}
        What the spline shapes of an element-wise flow depend on: every parent (the paper's
        conditional spline) or the discrete parents only (one spline per site x sex).
    """

    name: str
    kind: str
    parents: list = field(default_factory=list)
    dim: int = 1
    categories: int = 2
    log_transform: bool = False
    flow: str = "linear-spline"
    architecture: str = "elementwise"
    num_layers: int = 1
    correlated: bool = True
    additive_parents: list = field(default_factory=list)
    spline_conditioning: str = "all"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"node {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "binary":
            self.categories = 2
        self.parents = list(self.parents)
        self.additive_parents = list(self.additive_parents)
        if self.spline_conditioning not in ("all", "discrete"):
            raise ValueError(f"node {self.name!r}: spline_conditioning must be 'all' or 'discrete'")
        stray = [p for p in self.additive_parents if p not in self.parents]
        if stray:
            raise ValueError(f"node {self.name!r}: additive_parents {stray} are not parents")

    @property
    def discrete(self) -> bool:
        return self.kind in ("binary", "categorical")

    def to_dict(self) -> dict:
        return asdict(self)


class CausalGraph:
    """A directed acyclic graph of :class:`NodeSpec`, kept in topological order.

    Parameters
    ----------
    nodes : sequence of NodeSpec or dict
    """

    def __init__(self, nodes):
        specs = [n if isinstance(n, NodeSpec) else NodeSpec(**n) for n in nodes]
        names = [n.name for n in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique, got {names}")
        by_name = {n.name: n for n in specs}
        for node in specs:
            unknown = [p for p in node.parents if p not in by_name]
            if unknown:
                raise ValueError(f"node {node.name!r} has unknown parent(s) {unknown}")
        self.nodes = {n.name: n for n in self._topological(specs, by_name)}

    @staticmethod
    def _topological(specs, by_name):
        order, state = [], {}

        def visit(name, path):
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                raise ValueError(f"the graph has a cycle through {' -> '.join(path + [name])}")
            state[name] = "visiting"
            for parent in by_name[name].parents:
                visit(parent, path + [name])
            state[name] = "done"
            order.append(by_name[name])

        for spec in specs:
            visit(spec.name, [])
        return order

    @property
    def order(self) -> list:
        """Node names, parents before children."""
        return list(self.nodes)

    def parents(self, name: str) -> list:
        return list(self.nodes[name].parents)

    def children(self, name: str) -> list:
        return [n for n, spec in self.nodes.items() if name in spec.parents]

    def descendants(self, names) -> set:
        """Every node downstream of ``names`` (not including them)."""
        found, frontier = set(), list(names)
        while frontier:
            for child in self.children(frontier.pop()):
                if child not in found:
                    found.add(child)
                    frontier.append(child)
        return found

    def to_list(self) -> list:
        return [spec.to_dict() for spec in self.nodes.values()]

    def __repr__(self) -> str:
        edges = "; ".join(f"{', '.join(s.parents) or '-'} -> {n}" for n, s in self.nodes.items())
        return f"CausalGraph({edges})"


def harmonization_graph(n_sites: int, n_features: int, *, flow: str = "quadratic-spline",
                        architecture: str = "elementwise", num_layers: int = 1,
                        correlated: bool = True, log_features: bool = True,
                        site_interactions: bool = False, spline_conditioning: str = "discrete",
                        extra_parents=None, feature_node: str = "x") -> CausalGraph:
    """The graph of Table 6 (+ optional extra root parents of the features).

    Parameters
    ----------
    n_sites, n_features : int
    flow, architecture, num_layers, correlated
        Mechanism of the feature node.
    log_features : bool
        Model the features on the log scale.
    site_interactions : bool
        ``False`` (default): the site enters the feature mechanism additively (it shifts the
        flow's parameters by a learned constant per site); age and sex go through the context
        network. ``True``: the paper's joint context network over ``[s, a, t]``, which can also
        learn site-by-age interactions — unidentifiable where sites cover different ages.
    spline_conditioning : {"discrete", "all"}
        Spline shapes of the features per site x sex (default; location and scale still
        follow age) or per row from the whole context (the paper's conditional spline).
    extra_parents : dict, optional
        ``{name: "binary" | "continuous"}`` further observed root causes of the features.
    feature_node : str
        Name of the feature node.
    """
    extra_parents = dict(extra_parents or {})
    nodes = [
        NodeSpec("sex", "binary"),
        NodeSpec("site", "categorical", categories=n_sites),
        # Table 6: a := (Spline o Affine o Exp)(eps_A) with the linear(-rational) spline of [7]
        NodeSpec("age", "continuous", log_transform=True, flow="linear-spline"),
    ]
    for name, kind in extra_parents.items():
        nodes.append(NodeSpec(name, kind, flow="linear-spline"))
    nodes.append(NodeSpec(feature_node, "continuous", parents=["sex", "age", "site", *extra_parents],
                          dim=n_features, log_transform=log_features, flow=flow,
                          architecture=architecture, num_layers=num_layers, correlated=correlated,
                          additive_parents=[] if site_interactions else ["site"],
                          spline_conditioning=spline_conditioning))
    return CausalGraph(nodes)
