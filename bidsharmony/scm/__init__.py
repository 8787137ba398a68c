"""Deep structural causal models with normalizing-flow mechanisms: the engine of two methods.

The flow-SCM table harmonizer (:mod:`bidsharmony.features.flow_scm`) and the deep-SCM image
harmonizer (:mod:`bidsharmony.images.deepscm_image`) both build on it.

Modules, from the bottom up:

* :mod:`.splines` — monotone element-wise splines (linear-rational, rational-quadratic);
* :mod:`.flows` — conditional flows built with nflows (element-wise or masked autoregressive);
* :mod:`.graph` — nodes, parents, topological order; the Table 6 harmonization graph;
* :mod:`.mechanisms` — Gumbel-max categorical and flow mechanisms with exact abduction;
* :mod:`.model` — :class:`FlowSCM`: log_prob, abduct, predict, counterfactual, sample;
* :mod:`.training` — maximum-likelihood training as in Wang et al. (2021).

Importing this package imports torch and nflows.
"""

from .graph import CausalGraph, NodeSpec, harmonization_graph
from .model import FlowSCM
from .training import TrainingConfig, train_scm

__all__ = ["CausalGraph", "FlowSCM", "NodeSpec", "TrainingConfig", "harmonization_graph", "train_scm"]
