"""What every harmonizer shares, and the way in: build, fit, save and load any method by name.

Here live the interface (:mod:`.base` for feature tables, :mod:`.image_base` for images), the
registry of methods (:mod:`.registry`), input validation (:mod:`.validation`), the errors and
the scikit-learn pipeline step (:mod:`.sklearn_adapter`). The methods themselves live by data
kind: :mod:`bidsharmony.features` (ComBat family, flow-scm, pooling) and
:mod:`bidsharmony.images` (histogram matching, Harmonizing Flows, BlindHarmony, deep SCM),
on the shared blocks :mod:`bidsharmony.flows` and :mod:`bidsharmony.scm`.

Pure library code — tables and covariates in, tables out; no BIDS, no Nipype::

    from bidsharmony.harmonize import get_harmonizer, load_harmonizer

    harmonizer = get_harmonizer("flow-scm", reference_site="siteA", epochs=100)
    harmonized = harmonizer.fit_transform(features, covariates)
    harmonizer.save("models/flow-scm")
    same = load_harmonizer("models/flow-scm")

Every method — table or image — is declared once, in :mod:`.registry` (name, kind, module,
what it needs, what it writes); its parameters are its constructor's.

Importing this package is light: torch/nflows (flow-scm) and neuroHarmonize (ComBat, CovBat) are
imported only when a harmonizer that needs them is created or loaded.
"""

from __future__ import annotations

from .names import HARMONIZERS

__all__ = ["HARMONIZERS", "get_harmonizer", "harmonizer_class", "load_harmonizer"]


def harmonizer_class(name: str):
    """The class implementing harmonizer ``name`` (one of :data:`HARMONIZERS`)."""
    from .base import harmonizer_class as lookup

    return lookup(name)


def get_harmonizer(name: str, **params):
    """A new, unfitted harmonizer.

    Parameters
    ----------
    name : str
        One of :data:`HARMONIZERS` (the table methods of :mod:`.registry`), e.g. ``"combat"``,
        ``"combat-gam"``, ``"covbat"``, ``"flow-scm"``.
    **params
        Keyword arguments of that harmonizer's class (e.g. ``reference_site``,
        ``random_seed``, ``flow``, ``epochs``); any other name is refused with a
        :class:`~bidsharmony.harmonize.errors.HarmonizerParameterError` listing the valid ones.
    """
    from .base import check_parameter_names

    cls = harmonizer_class(name)
    check_parameter_names(cls, params)
    return cls(**params)


def load_harmonizer(path):
    """Load a model folder written by ``Harmonizer.save`` (any method)."""
    from .base import Harmonizer

    return Harmonizer.load(path)
