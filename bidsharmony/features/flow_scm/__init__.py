"""flow-scm: counterfactual harmonization of feature tables with a flow-based SCM.

* :mod:`.harmonizer` — :class:`FlowSCMHarmonizer`, the common harmonizer interface:
  abduction, ``do(site = reference)``, prediction;
* :mod:`.adaptation` — adding sites to a fitted model, only their conditioning learned.

The causal-model engine (graph, mechanisms, flows, training) is :mod:`bidsharmony.scm`.
Importing this package imports torch and nflows.
"""

from .harmonizer import FlowSCMHarmonizer

__all__ = ["FlowSCMHarmonizer"]
