"""Names of the group-level harmonizers, importable without torch.

The command line offers these; :func:`bidsharmony.harmonize.get_harmonizer` maps each to
its class. Add a name here only when its harmonizer is implemented and tested.
"""

HARMONIZERS: tuple[str, ...] = ("combat", "combat-gam", "covbat", "equivariant-pooling", "flow-scm")
