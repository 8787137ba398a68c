"""bidsharmony: a BIDS App for multi-site brain MRI harmonization."""

from ._version import __version__

__all__ = ["__version__"]
