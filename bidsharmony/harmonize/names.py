"""Names of the group-level harmonizers, importable without torch.

The command line offers these; :func:`bidsharmony.harmonize.get_harmonizer` maps each to
its class. Add a name here only when its harmonizer is implemented and tested.
"""

HARMONIZERS: tuple[str, ...] = ("combat", "combat-gam", "combat-ls", "covbat", "equivariant-pooling", "flow-scm")
"""Harmonizers of feature tables (ROI volumes)."""

IMAGE_HARMONIZERS: tuple[str, ...] = ("blindharmony", "deepscm-image", "harmonizing-flows", "histogram-matching")
"""Harmonizers of template-space images (see :mod:`bidsharmony.harmonize.image_base`)."""
