"""Every harmonizer bidsharmony offers, declared once.

Each :class:`Method` names a harmonizer, its kind (``"table"``: a feature table such as ROI
volumes; ``"image"``: the template-space T1w images), the module that implements it (imported
only when the method is used, so this table is read without torch), what it needs from the
pipeline, what it writes, and one line for ``--help``. Parameters are not listed: they are the
keyword arguments of the class's constructor (:func:`parameters`), with their defaults.

The command line's ``--harmonizer`` choices and help, the Boutiques descriptor (made from the
parser), the ``--harmonizer-param`` checks, the group level's dispatch and the loaders of saved
models all read this table: a new method is added here and nowhere else outside its module.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field

TABLE, IMAGE = "table", "image"

#: what a method may need from the pipeline, besides its input
COVARIATES = "covariates"          # site, age, sex (and --protect extras) of every scan
TEMPLATE_IMAGES = "template-space images"  # the participant level's T1w on the template grid
REFERENCE_SITE = "reference site"  # --reference-site, or the largest site when none is given

#: what a method writes
FEATURES = "harmonized features"
REPRESENTATION = "representation"  # latent coordinates without units, not harmonized features
IMAGES = "harmonized images"


@dataclass(frozen=True)
class Method:
    """One harmonizer: how the pipeline finds, feeds and describes it."""

    name: str
    kind: str
    module: str
    summary: str
    needs: tuple[str, ...]
    output: str
    #: draws ``--counterfactual`` figures beyond ``do(site = reference)``
    counterfactuals: bool = False
    #: the method's own command-line flags: constructor parameter <- run setting (config field)
    settings: dict = field(default_factory=dict)

    def load(self):
        """The class implementing the method (its module is imported on first use)."""
        importlib.import_module(self.module)
        from .base import _REGISTRY
        from .image_base import _IMAGE_REGISTRY

        return (_REGISTRY if self.kind == TABLE else _IMAGE_REGISTRY)[self.name]


METHODS: tuple[Method, ...] = (
    Method("combat", TABLE, "bidsharmony.features.combat",
           "empirical-Bayes location/scale ComBat (neuroHarmonize), age linear",
           (COVARIATES,), FEATURES),
    Method("combat-gam", TABLE, "bidsharmony.features.combat",
           "ComBat with a smooth (spline) age effect (neuroHarmonize)",
           (COVARIATES,), FEATURES),
    Method("combat-ls", TABLE, "bidsharmony.features.combat_ls",
           "ComBat whose covariates change a feature's spread as well as its mean (Gardner et al.)",
           (COVARIATES,), FEATURES),
    Method("covbat", TABLE, "bidsharmony.features.covbat",
           "ComBat, then the site differences of the residual covariance (Chen et al.)",
           (COVARIATES,), FEATURES),
    Method("equivariant-pooling", TABLE, "bidsharmony.features.pooling",
           "a site-invariant, age-equivariant representation (Lokhande et al.), not features",
           (COVARIATES,), REPRESENTATION),
    Method("flow-scm", TABLE, "bidsharmony.features.flow_scm.harmonizer",
           "counterfactual do(site=reference) with a flow-based structural causal model",
           (COVARIATES, REFERENCE_SITE), FEATURES, settings={"flow": "flow", "epochs": "epochs"}),
    Method("blindharmony", IMAGE, "bidsharmony.images.blindharmony",
           "a flow model of the reference site's slices guides each scan to it (Jeong et al.)",
           (TEMPLATE_IMAGES, REFERENCE_SITE), IMAGES),
    Method("deepscm-image", IMAGE, "bidsharmony.images.deepscm_image",
           "a deep structural causal model of 2D slices, do(site=reference) (Pawlowski et al.)",
           (TEMPLATE_IMAGES, COVARIATES, REFERENCE_SITE), IMAGES, counterfactuals=True),
    Method("harmonizing-flows", IMAGE, "bidsharmony.images.harmonizing_flows",
           "a flow prior of the reference site adapts a per-site harmonizer (Beizaee et al.)",
           (TEMPLATE_IMAGES, REFERENCE_SITE), IMAGES),
    Method("histogram-matching", IMAGE, "bidsharmony.images.histogram",
           "piecewise-linear landmark histogram matching to the reference site (Nyúl & Udupa)",
           (TEMPLATE_IMAGES, REFERENCE_SITE), IMAGES),
)

_BY_NAME = {method.name: method for method in METHODS}


def names(kind: str | None = None) -> tuple[str, ...]:
    """Names of the methods of ``kind`` (``"table"``, ``"image"``; ``None``: all), in table order."""
    return tuple(m.name for m in METHODS if kind is None or m.kind == kind)


def method(name: str) -> Method:
    """The declaration of ``name``; raises :class:`HarmonizerParameterError` for an unknown one."""
    if name not in _BY_NAME:
        from .errors import HarmonizerParameterError

        raise HarmonizerParameterError(f"unknown harmonizer {name!r}; choose one of {', '.join(sorted(_BY_NAME))}")
    return _BY_NAME[name]


def modules(kind: str) -> dict[str, str]:
    """``{name: module}`` of the methods of ``kind`` (what loading a saved model imports)."""
    return {m.name: m.module for m in METHODS if m.kind == kind}


def parameters(name: str) -> dict[str, object]:
    """``{parameter: default}`` of method ``name``: its constructor's keyword arguments."""
    from .base import constructor_parameters

    cls = method(name).load()
    defaults = {}
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            for key, parameter in inspect.signature(klass.__init__).parameters.items():
                defaults.setdefault(key, parameter.default)
    return {key: defaults[key] for key in constructor_parameters(cls)}


def help_text() -> str:
    """The ``--harmonizer`` help: every method with its summary, by kind."""
    def listing(kind):
        return "; ".join(f"{m.name}: {m.summary}" for m in METHODS if m.kind == kind)

    return (f"harmonization method(s). Of the ROI features — {listing(TABLE)}. Of the template-space "
            f"images — {listing(IMAGE)}")


def markdown_table() -> str:
    """The README's table of the methods: name, input, needs, output and summary."""
    rows = ["| method | input | needs | writes | what it does |", "| --- | --- | --- | --- | --- |"]
    for m in METHODS:
        kind = "ROI feature table" if m.kind == TABLE else "template-space T1w"
        rows.append(f"| `{m.name}` | {kind} | {', '.join(m.needs)} | {m.output} | {m.summary} |")
    return "\n".join(rows) + "\n"
