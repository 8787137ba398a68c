"""The group level's command-line side: check the options, then run the workflow.

Everything the group level does — collecting inputs, fitting and applying the harmonizers,
writing derivatives, evaluating, reporting — lives in :mod:`bidsharmony.workflows.group_level`.
"""

from __future__ import annotations

from pathlib import Path

from ..harmonize import registry


def run_group(config) -> list[Path]:
    """Refuse inconsistent group options, then run the group level (see
    :func:`bidsharmony.workflows.group_level.run_group`)."""
    from ..workflows.group_level import run_group as run_group_level

    check_group_options(config)
    return run_group_level(config)


def check_group_options(config) -> None:
    """Refuse ``--harmonizer-param`` keys no chosen harmonizer takes, and ``--counterfactual`` or
    ``--protect`` with no chosen harmonizer able to honour them."""
    from ..errors import UsageError

    drawers = [m for m in registry.names() if registry.method(m).counterfactuals]
    if config.counterfactual and not set(drawers) & set(config.harmonizer) and not config.harmonizer_model:
        raise UsageError(f"--counterfactual draws deep-SCM counterfactuals: add --harmonizer {' or '.join(drawers)} "
                         f"(or --harmonizer-model with a saved {' or '.join(drawers)} model)")
    if config.protect:
        unable = [m for m in config.harmonizer if registry.method(m).kind == registry.TABLE
                  and "extra_covariates" not in registry.parameters(m)]
        if unable:
            raise UsageError(f"--protect: {', '.join(unable)} cannot keep further covariates; drop "
                             f"{'it' if len(unable) == 1 else 'them'} from --harmonizer or drop --protect")
    if not config.harmonizer_params:
        return
    accepted = set()
    for method in config.harmonizer:
        accepted |= set(registry.parameters(method))
    unknown = sorted(set(config.harmonizer_params) - accepted)
    if unknown:
        chosen = ", ".join(config.harmonizer) or "any harmonizer (none chosen; a saved model keeps its own)"
        choices = ", ".join(sorted(accepted - {"reference_site", "random_seed"})) or "nothing"
        raise UsageError(f"--harmonizer-param {', '.join(unknown)}: not a parameter of {chosen}; choose among {choices}")
