"""One registry feeds the classes, the command line, Boutiques and the README (issue 23, point 3)."""

import json
import types
from pathlib import Path

import pytest

from bidsharmony.cli import docs
from bidsharmony.cli.boutiques import build_descriptor
from bidsharmony.cli.group import check_group_options
from bidsharmony.workflows.group_level import RUN_SETTINGS, harmonizer_params
from bidsharmony.cli.parser import build_parser
from bidsharmony.errors import UsageError
from bidsharmony.harmonize import registry
from bidsharmony.harmonize.base import HARMONIZER_MODULES, Harmonizer, _REGISTRY, constructor_parameters
from bidsharmony.harmonize.image_base import IMAGE_HARMONIZER_MODULES, ImageHarmonizer, _IMAGE_REGISTRY
from bidsharmony.harmonize.names import HARMONIZERS, IMAGE_HARMONIZERS

README = Path(__file__).parents[2] / "README.md"


@pytest.mark.parametrize("name", registry.names())
def test_each_entry_is_its_class(name):
    method = registry.method(name)
    cls = method.load()
    assert cls.name == name
    assert issubclass(cls, Harmonizer if method.kind == registry.TABLE else ImageHarmonizer)
    assert list(registry.parameters(name)) == constructor_parameters(cls)
    assert cls(**registry.parameters(name)).get_params() == cls().get_params()  # the defaults build it


def test_no_class_is_left_out_of_the_registry():
    for name in registry.names():
        registry.method(name).load()
    assert set(_REGISTRY) == set(registry.names(registry.TABLE))
    assert set(_IMAGE_REGISTRY) == set(registry.names(registry.IMAGE))
    assert HARMONIZER_MODULES == registry.modules(registry.TABLE)
    assert IMAGE_HARMONIZER_MODULES == registry.modules(registry.IMAGE)
    assert HARMONIZERS + IMAGE_HARMONIZERS == registry.names()


def test_command_line_boutiques_and_readme_come_from_the_registry():
    action = next(a for a in build_parser()._actions if a.dest == "harmonizer")
    assert tuple(action.choices) == registry.names()
    assert action.help == registry.help_text() and all(name in action.help for name in registry.names())
    boutiques = next(i for i in build_descriptor()["inputs"] if i["id"] == "harmonizer")
    assert boutiques["value-choices"] == list(registry.names())
    committed = json.loads((Path(__file__).parents[2] / "boutiques" / "bidsharmony.json").read_text())
    assert next(i for i in committed["inputs"] if i["id"] == "harmonizer") == boutiques
    text = README.read_text()
    assert docs.with_method_table(text) == text, "README's method table is stale: python -m bidsharmony.cli.docs README.md"


def _config(**changes):
    settings = dict(reference_site="siteA", min_site_size=7, random_seed=3, flow="affine", epochs=5, omp_nthreads=2,
                    protect=[], harmonizer_params={}, harmonizer=[], counterfactual={}, harmonizer_model=None)
    return types.SimpleNamespace(**{**settings, **changes})


@pytest.mark.parametrize("name", registry.names())
def test_run_settings_reach_the_methods_that_take_them(name):
    accepted = registry.parameters(name)
    params = harmonizer_params(_config(harmonizer_params={"epochs": 9, "not_a_parameter": 1}), name)
    own = registry.method(name).settings
    assert set(params) == {p for p in (*RUN_SETTINGS, *own, "epochs") if p in accepted}
    assert params.get("epochs", 9) == 9  # --harmonizer-param overrides a run setting
    if "num_threads" in accepted:
        assert params["num_threads"] == 2


def test_option_checks_ask_the_registry():
    drawers = [m for m in registry.names() if registry.method(m).counterfactuals]
    assert drawers == ["deepscm-image"]
    with pytest.raises(UsageError, match="add --harmonizer deepscm-image"):
        check_group_options(_config(counterfactual={"age": "+10"}, harmonizer=["combat"]))
    check_group_options(_config(counterfactual={"age": "+10"}, harmonizer=["deepscm-image"]))
    with pytest.raises(UsageError, match="not a parameter of combat; choose among .*empirical_bayes"):
        check_group_options(_config(harmonizer=["combat"], harmonizer_params={"slice_size": 16}))
    check_group_options(_config(harmonizer=["combat", "blindharmony"], harmonizer_params={"slice_size": 16}))
