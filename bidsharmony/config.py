"""Run settings of one bidsharmony invocation.

The command line is parsed into a :class:`Config` (in :mod:`bidsharmony.cli.parser`); the
workflows read their settings from it, and a copy is written to
``<output_dir>/logs/config-<date>.toml`` so that every run can be inspected and repeated.
Unlike fMRIPrep's module-level config, a :class:`Config` is a plain object passed around
explicitly: two runs in one Python process never share settings.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ._version import __version__

ANALYSIS_LEVELS = ("participant", "group")
DEFAULT_TEMPLATE = "MNI152NLin2009aSym"
DEFAULT_ATLAS = "Neuromorphometrics"


def parse_space(space: str) -> tuple[str, int]:
    """Split ``MNI152NLin2009aSym:res-2`` into ``("MNI152NLin2009aSym", 2)``."""
    name, _, modifier = space.partition(":")
    resolution = 1
    if modifier:
        key, _, value = modifier.partition("-")
        if key != "res" or not value.isdigit():
            raise ValueError(f"output space {space!r}: the only modifier is ':res-<N>', e.g. {name}:res-2")
        resolution = int(value)
    return name, resolution


def atlas_label(atlas: str) -> str:
    """A BIDS label for ``--atlas``: the name itself, or the ``atlas-`` entity/stem of a file."""
    name = Path(atlas).name
    if name.endswith((".nii", ".nii.gz")):
        stem = name.split(".")[0]
        entities = dict(p.split("-", 1) for p in stem.split("_") if "-" in p)
        name = entities.get("atlas") or "".join(c for c in stem if c.isalnum())
    return name


def default_templateflow_home() -> Path:
    """The TemplateFlow cache used when ``TEMPLATEFLOW_HOME`` is not set.

    A bidsharmony-owned folder (not TemplateFlow's own default), so that filling it from
    wheel-shipped data never mixes with a user's downloaded TemplateFlow cache.
    """
    cache = os.getenv("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "bidsharmony" / "templateflow"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity: a scheduler's allocation, ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS has no sched_getaffinity
        return os.cpu_count() or 1


def default_omp_nthreads(nprocs: int) -> int:
    """Threads per process when not given: as fMRIPrep, one core left to the scheduler, at most 8."""
    return max(1, min(nprocs - 1, 8))


@dataclass
class Config:
    """All settings of one run; see ``bidsharmony --help`` for their meaning."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path | None = None
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    bids_filters: dict = field(default_factory=dict)
    skip_bids_validation: bool = False
    nprocs: int | None = None  # None: usable_cpus()
    omp_nthreads: int | None = None  # None: default_omp_nthreads(nprocs)
    mem_gb: float | None = None
    use_plugin: Path | None = None
    random_seed: int = 0
    output_spaces: list[str] = field(default_factory=lambda: [DEFAULT_TEMPLATE])
    atlas: str = DEFAULT_ATLAS
    reg_quality: str = "standard"
    n4_shrink_factor: int | None = None  # None: from the voxel size
    skull_strip: str = "deepbet"  # or "ants"
    fail_on_qc: bool = False
    derivatives: list[Path] = field(default_factory=list)
    site_column: str | None = None
    harmonizer: list[str] = field(default_factory=list)
    harmonizer_params: dict = field(default_factory=dict)
    reference_site: str | None = None
    counterfactual: dict = field(default_factory=dict)
    features: Path | None = None
    covariates: Path | None = None
    protect: list[str] = field(default_factory=list)
    harmonizer_model: Path | None = None
    flow: str = "affine"
    epochs: int = 20
    adapt_new_site: bool = False
    min_site_size: int = 10
    evaluate: bool = False
    evaluate_repeats: int = 3
    templateflow_home: Path | None = None
    verbosity: int = 0
    version: str = __version__
    run_uuid: str = field(
        default_factory=lambda: datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    )

    def __post_init__(self):
        if self.nprocs is None:
            self.nprocs = usable_cpus()
        if self.omp_nthreads is None:
            self.omp_nthreads = default_omp_nthreads(self.nprocs)
        for name in ("bids_dir", "output_dir", "work_dir", "use_plugin", "templateflow_home",
                     "features", "covariates", "harmonizer_model"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value).absolute())
        self.derivatives = [Path(p).absolute() for p in self.derivatives or []]
        if self.work_dir is None:
            self.work_dir = self.output_dir / "work"
        if self.templateflow_home is None:
            env = os.getenv("TEMPLATEFLOW_HOME")
            self.templateflow_home = Path(env) if env else default_templateflow_home()

    @property
    def template(self) -> str:
        """The first output space: the template every subject is registered to."""
        return parse_space(self.output_spaces[0])[0]

    @property
    def template_resolution(self) -> int:
        """TemplateFlow ``res`` of the registration target (``TEMPLATE:res-2``; default 1)."""
        return parse_space(self.output_spaces[0])[1]

    @property
    def atlas_name(self) -> str:
        """The atlas' name in output file names (``atlas-<name>``)."""
        return atlas_label(self.atlas)

    def to_dict(self) -> dict:
        """A TOML-serialisable dictionary (paths as strings, ``None`` left out)."""
        out = {}
        for key, value in asdict(self).items():
            if value is None:
                continue
            if isinstance(value, list):
                value = [str(v) if isinstance(v, Path) else v for v in value]
            out[key] = str(value) if isinstance(value, Path) else value
        return out

    def to_toml(self, path: str | os.PathLike) -> Path:
        """Write the settings to ``path`` atomically and return it."""
        from .utils.io import atomic_write_text

        return atomic_write_text(path, tomli_w.dumps(self.to_dict()))

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "Config":
        """Read settings written by :meth:`to_toml`."""
        data = tomllib.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def write_log(self) -> Path:
        """Save the settings as ``<output_dir>/logs/config-<run_uuid>.toml``."""
        return self.to_toml(self.output_dir / "logs" / f"config-{self.run_uuid}.toml")
