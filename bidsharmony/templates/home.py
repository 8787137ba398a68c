"""TemplateFlow's home: which cache folder this process uses, and telling an already
imported templateflow about it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..config import default_templateflow_home



def templateflow_home() -> Path:
    """``$TEMPLATEFLOW_HOME``, else bidsharmony's own cache folder (never TemplateFlow's)."""
    env = os.getenv("TEMPLATEFLOW_HOME")
    return Path(env).absolute() if env else default_templateflow_home()


def _loaded_cache():
    """TemplateFlow's process-wide cache object if templateflow was imported, else None."""
    conf = sys.modules.get("templateflow.conf")
    return getattr(conf, "_cache", None) if conf is not None else None


def _forget_layout(home: Path) -> None:
    """Make an already-built TemplateFlow layout of ``home`` re-index (files were added)."""
    cache = _loaded_cache()
    if cache is not None and Path(cache.config.root).absolute() == Path(home).absolute():
        cache.__dict__.pop("layout", None)  # ``layout`` is a functools.cached_property


def use_templateflow_home(home: str | os.PathLike) -> Path:
    """Make this process use ``home`` as TemplateFlow's cache.

    Sets ``TEMPLATEFLOW_HOME`` (read by TemplateFlow when imported). If templateflow was
    already imported, its configuration was frozen at import: TemplateFlow 25.x keeps one
    ``TemplateFlowCache`` in ``templateflow.conf._cache`` (shared by ``templateflow.api``),
    holding a ``CacheConfig`` (root, from the environment at import) and a cached BIDS
    ``layout``. It gets a new config for ``home``, its derived state is rebuilt and the
    layout is dropped, so the next query indexes ``home``.

    Returns
    -------
    Path
        ``home``, absolute.
    """
    home = Path(home).absolute()
    os.environ["TEMPLATEFLOW_HOME"] = str(home)
    cache = _loaded_cache()
    if cache is not None:
        from templateflow.conf.cache import CacheConfig

        cache.config = CacheConfig(root=home)
        cache.__post_init__()  # rebuilds the download manager and `precached` for the new root
        cache.__dict__.pop("layout", None)
    elif "templateflow.conf" in sys.modules:  # pragma: no cover - templateflow < 25
        conf = sys.modules["templateflow.conf"]
        conf.TF_HOME = home
        if hasattr(conf, "init_layout"):
            conf.init_layout()
    return home
