"""Names of the group-level harmonizers, importable without torch (from :mod:`.registry`).

The command line offers these; :func:`bidsharmony.harmonize.get_harmonizer` maps each to
its class. A new method is declared in :data:`bidsharmony.harmonize.registry.METHODS`.
"""

from .registry import IMAGE, TABLE, names

HARMONIZERS: tuple[str, ...] = names(TABLE)
"""Harmonizers of feature tables (ROI volumes)."""

IMAGE_HARMONIZERS: tuple[str, ...] = names(IMAGE)
"""Harmonizers of template-space images (see :mod:`bidsharmony.harmonize.image_base`)."""
