"""One ``--random-seed`` for every random number generator a run touches."""

from __future__ import annotations

import os
import random


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and make ANTs/ITK use ``seed``.

    ANTs reads ``ANTS_RANDOM_SEED`` in every process it runs in, so setting it here also
    reaches Nipype's worker processes, which inherit the environment.
    """
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    os.environ["ANTS_RANDOM_SEED"] = str(seed)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but keep the CLI light
        return
    torch.manual_seed(seed)
